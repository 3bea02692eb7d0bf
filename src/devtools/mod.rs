//! Plugin developer tooling behind `wsprism new plugin` and
//! `wsprism plugin call` (README "Command line", "Writing a plugin").
//!
//! Owns: [`scaffold`], which writes a ready-to-build plugin project from files
//! compiled into the binary (the repository's `wit/` and `sdk/` sources, so a
//! project can never drift from the gateway that made it); and [`call`], which
//! runs one call of a built component against an in-memory host and reports
//! every effect. Input: the command line, through `main.rs`. Output: files on
//! disk, or a JSON report on stdout.
//!
//! Must not: serve traffic, or run plugins any other way than the gateway
//! does — [`call`] goes through the real [`crate::plugin_host::PluginHost`]
//! (engine, limits, linker and imports), with a memory kv and a lone session.

pub mod call;
pub mod scaffold;
