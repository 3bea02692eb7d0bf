//! `wsprism new plugin <name> --lang rust|js|python [--dir D]`: a plugin
//! project that builds from the binary's own files, with no checkout.
//!
//! Owns: the project layouts and the rules for a project's name and folder.
//! Input: the name, the language and the parent folder; output: `D/<name>/`
//! holding the WIT, the SDK glue the language needs, an echo plugin to edit, a
//! README (build, install into `plugins/`, route, test) and an executable
//! `build.sh` that writes `<name>.wasm` next to it.
//!
//! Every file the gateway's repository already has is compiled in with
//! `include_str!` from `wit/` and `sdk/`: the WIT, the Rust SDK's sources
//! (a project depends on its own copy, never on a checkout), the pinned
//! componentize-js / componentize-py versions, the TypeScript declarations
//! and the JavaScript SDK's rewrite of componentize-js's generated bindings
//! (`lib/*.mjs`, which the JavaScript `build.sh` loads).
//! A project is therefore always built against the API of the gateway that
//! wrote it. The language templates live in `templates/` beside this file.
//!
//! Must not: overwrite anything. A name the plugin loader would not accept, or
//! a target folder that exists and is not empty, is refused before any write.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The plugin API, as the gateway links it.
const WIT: &str = include_str!("../../wit/wsprism-plugin.wit");

/// The Rust SDK, vendored into Rust projects as `sdk/rust`.
const RUST_SDK_MANIFEST: &str = include_str!("../../sdk/rust/Cargo.toml");
const RUST_SDK_LIB: &str = include_str!("../../sdk/rust/src/lib.rs");
const RUST_SDK_TESTING: &str = include_str!("../../sdk/rust/src/testing.rs");
/// The lock file the SDK's examples are built and tested with: a new project
/// starts from the same dependency versions.
const RUST_LOCK: &str = include_str!("../../sdk/examples/Cargo.lock");
/// The SDK manifest declares itself a workspace (it is not one of the
/// gateway's members); inside a project it is a member of the project's.
const RUST_SDK_WORKSPACE: &str =
    "# Not a member of the gateway's build: guests compile for wasm32-wasip2.\n[workspace]\n";

/// componentize-js and friends, pinned as the JavaScript SDK pins them.
const JS_PACKAGE: &str = include_str!("../../sdk/js/package.json");
const JS_LOCK: &str = include_str!("../../sdk/js/package-lock.json");
/// TypeScript declarations of the WIT (every world), for editors and
/// `tsc --checkJs`.
const JS_TYPES: [(&str, &str); 12] = [
    (
        "types/plugin.d.ts",
        include_str!("../../sdk/js/types/plugin.d.ts"),
    ),
    (
        "types/plugin-with-hooks.d.ts",
        include_str!("../../sdk/js/types/plugin-with-hooks.d.ts"),
    ),
    (
        "types/ext-lane-plugin.d.ts",
        include_str!("../../sdk/js/types/ext-lane-plugin.d.ts"),
    ),
    (
        "types/ext-lane-plugin-lifecycle.d.ts",
        include_str!("../../sdk/js/types/ext-lane-plugin-lifecycle.d.ts"),
    ),
    (
        "types/interfaces/wsprism-plugin-backend.d.ts",
        include_str!("../../sdk/js/types/interfaces/wsprism-plugin-backend.d.ts"),
    ),
    (
        "types/interfaces/wsprism-plugin-hooks.d.ts",
        include_str!("../../sdk/js/types/interfaces/wsprism-plugin-hooks.d.ts"),
    ),
    (
        "types/interfaces/wsprism-plugin-kv.d.ts",
        include_str!("../../sdk/js/types/interfaces/wsprism-plugin-kv.d.ts"),
    ),
    (
        "types/interfaces/wsprism-plugin-lifecycle.d.ts",
        include_str!("../../sdk/js/types/interfaces/wsprism-plugin-lifecycle.d.ts"),
    ),
    (
        "types/interfaces/wsprism-plugin-log.d.ts",
        include_str!("../../sdk/js/types/interfaces/wsprism-plugin-log.d.ts"),
    ),
    (
        "types/interfaces/wsprism-plugin-realtime.d.ts",
        include_str!("../../sdk/js/types/interfaces/wsprism-plugin-realtime.d.ts"),
    ),
    (
        "types/interfaces/wsprism-plugin-session.d.ts",
        include_str!("../../sdk/js/types/interfaces/wsprism-plugin-session.d.ts"),
    ),
    (
        "types/interfaces/wsprism-plugin-types.d.ts",
        include_str!("../../sdk/js/types/interfaces/wsprism-plugin-types.d.ts"),
    ),
];
/// The SDK's build-time rewrite of the bindings componentize-js generates
/// (`build.sh` runs componentize-js with `node --import lib/register.mjs`):
/// cheaper calls, same behaviour; `lib/bindings.mjs` says what and why.
const JS_LIB: [(&str, &str); 3] = [
    (
        "lib/register.mjs",
        include_str!("../../sdk/js/lib/register.mjs"),
    ),
    ("lib/hooks.mjs", include_str!("../../sdk/js/lib/hooks.mjs")),
    (
        "lib/bindings.mjs",
        include_str!("../../sdk/js/lib/bindings.mjs"),
    ),
];

/// componentize-py, pinned as the Python SDK pins it.
const PY_REQUIREMENTS: &str = include_str!("../../sdk/python/requirements.txt");

/// The README sections every language shares (install, route, try, files).
const README_DEPLOY: &str = include_str!("templates/deploy.md");

/// The world JavaScript and Python projects build for, as their SDKs do:
/// `plugin`, which exports `handle` and imports `session` (the calling
/// session as plain functions). The project's README says how to add the
/// hooks (world `plugin-with-hooks`). Rust projects need no world: the Rust
/// SDK builds `plugin-with-hooks` itself.
const WORLD: &str = "plugin";

/// Longest plugin name the loader accepts.
const MAX_NAME_BYTES: usize = 64;

/// A plugin's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Rust, with the wsPrism SDK crate (`cargo`, target `wasm32-wasip2`).
    Rust,
    /// JavaScript, built with componentize-js.
    Js,
    /// Python, built with componentize-py.
    Python,
}

impl FromStr for Lang {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rust" => Ok(Self::Rust),
            "js" => Ok(Self::Js),
            "python" => Ok(Self::Python),
            other => Err(format!(
                "unknown language `{other}`: use rust, js or python"
            )),
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rust => "rust",
            Self::Js => "js",
            Self::Python => "python",
        })
    }
}

/// Why no project was written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name is not one the plugin loader accepts as a file stem.
    #[error(
        "`{0}` is not a plugin name: use 1 to {MAX_NAME_BYTES} ASCII letters, digits, `_` or `-` (the gateway loads `<name>.wasm` only for such names)"
    )]
    BadName(String),
    /// The target folder exists and is not an empty directory.
    #[error("{} already exists and is not an empty directory; choose another name or --dir", .0.display())]
    NotEmpty(PathBuf),
    /// Writing failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One file of a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectFile {
    /// Path inside the project, `/`-separated.
    pub path: String,
    /// Contents.
    pub contents: String,
    /// Whether it is a script to run (`build.sh`).
    pub executable: bool,
}

impl ProjectFile {
    fn new(path: &str, contents: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            contents: contents.into(),
            executable: false,
        }
    }
}

/// Checks `name` as the loader checks a plugin file's stem: 1 to 64 bytes of
/// `[A-Za-z0-9_-]` (safe in file names, metric labels and logs).
///
/// # Errors
/// [`ScaffoldError::BadName`].
pub fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ScaffoldError::BadName(name.to_owned()))
    }
}

/// Names cargo refuses for a package, or that would clash with the
/// project's own dependencies.
const RESERVED_CRATE_NAMES: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc_macro",
    "pub",
    "ref",
    "return",
    "self",
    "serde",
    "serde_json",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "wsprism_plugin",
    "yield",
];

/// The cargo package name of a Rust plugin: the plugin name itself when cargo
/// takes it, else `plugin-<name>` (cargo refuses names that start with a
/// digit or `-`, keywords, and names of the crates the project uses). The
/// component is still written as `<name>.wasm`.
pub fn crate_name(name: &str) -> String {
    let starts_with_letter = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic());
    let reserved = RESERVED_CRATE_NAMES.contains(&name.replace('-', "_").as_str());
    if starts_with_letter && !reserved {
        name.to_owned()
    } else {
        format!("plugin-{name}")
    }
}

/// Replaces every `{{key}}` of `template`.
fn render(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_owned(), |text, (key, value)| {
        text.replace(&format!("{{{{{key}}}}}"), value)
    })
}

/// The files of a new `lang` project named `name`.
///
/// # Errors
/// [`ScaffoldError::BadName`].
pub fn project(name: &str, lang: Lang) -> Result<Vec<ProjectFile>, ScaffoldError> {
    check_name(name)?;
    let krate = crate_name(name);
    let lib = krate.replace('-', "_");
    let vars = [
        ("name", name),
        ("crate", krate.as_str()),
        ("lib", lib.as_str()),
        ("world", WORLD),
        ("version", env!("CARGO_PKG_VERSION")),
    ];
    let (readme, build, files_doc, mut files) = match lang {
        Lang::Rust => (
            include_str!("templates/rust/README.md"),
            include_str!("templates/rust/build.sh"),
            "- `src/lib.rs` — the plugin;\n\
             - `sdk/rust/` — the wsPrism Rust SDK (`wsprism_plugin`, with the native \
             test host in `testing`), vendored: the project needs no checkout.\n",
            vec![
                ProjectFile::new(
                    "Cargo.toml",
                    render(include_str!("templates/rust/Cargo.toml"), &vars),
                ),
                ProjectFile::new("Cargo.lock", project_lock()),
                ProjectFile::new(
                    "src/lib.rs",
                    render(include_str!("templates/rust/lib.rs"), &vars),
                ),
                ProjectFile::new("sdk/rust/Cargo.toml", vendored_sdk_manifest()),
                ProjectFile::new("sdk/rust/src/lib.rs", RUST_SDK_LIB),
                ProjectFile::new("sdk/rust/src/testing.rs", RUST_SDK_TESTING),
                ProjectFile::new(".gitignore", "/target\n*.wasm\n"),
            ],
        ),
        Lang::Js => {
            let mut files = vec![
                ProjectFile::new(
                    "src/app.js",
                    render(include_str!("templates/js/app.js"), &vars),
                ),
                ProjectFile::new("package.json", project_package_json()),
                ProjectFile::new("package-lock.json", JS_LOCK),
                ProjectFile::new(".gitignore", "/node_modules\n*.wasm\n"),
            ];
            files.extend(
                JS_TYPES
                    .iter()
                    .chain(&JS_LIB)
                    .map(|(p, c)| ProjectFile::new(p, *c)),
            );
            (
                include_str!("templates/js/README.md"),
                include_str!("templates/js/build.sh"),
                "- `src/app.js` — the plugin;\n\
                 - `types/` — TypeScript declarations of the WIT (editors, `tsc --checkJs`);\n\
                 - `lib/` — the build-time rewrite of the bindings componentize-js generates \
                 (`build.sh` loads `lib/register.mjs`; `lib/bindings.mjs` says what it changes and why);\n\
                 - `package.json`, `package-lock.json` — the componentize-js version `build.sh` installs.\n",
                files,
            )
        }
        Lang::Python => (
            include_str!("templates/python/README.md"),
            include_str!("templates/python/build.sh"),
            "- `src/app.py` — the plugin (everything in `src/` goes into the component);\n\
             - `requirements.txt` — the componentize-py version `build.sh` installs.\n",
            vec![
                ProjectFile::new(
                    "src/app.py",
                    render(include_str!("templates/python/app.py"), &vars),
                ),
                ProjectFile::new("requirements.txt", PY_REQUIREMENTS),
                ProjectFile::new(".gitignore", "/.toolchain\n__pycache__/\n*.wasm\n"),
            ],
        ),
    };
    let mut vars = vars.to_vec();
    vars.push(("files", files_doc));
    files.push(ProjectFile::new(
        "README.md",
        format!(
            "{}\n{}",
            render(readme, &vars),
            render(README_DEPLOY, &vars)
        ),
    ));
    files.push(ProjectFile::new("wit/wsprism-plugin.wit", WIT));
    files.push(ProjectFile {
        executable: true,
        ..ProjectFile::new("build.sh", render(build, &vars))
    });
    Ok(files)
}

/// The examples' lock without the examples themselves: every registry
/// package pinned, plus the SDK; cargo adds the project on its first build.
fn project_lock() -> String {
    let mut blocks = RUST_LOCK.split("\n[[package]]\n");
    let mut lock = blocks.next().unwrap_or_default().to_owned();
    for block in blocks {
        let registry = block.contains("\nsource = ");
        if registry || block.starts_with("name = \"wsprism-plugin\"\n") {
            lock.push_str("\n[[package]]\n");
            lock.push_str(block);
        }
    }
    lock
}

/// The SDK's `package.json` without its scripts (they run the SDK's own
/// type generator, which a project does not have).
fn project_package_json() -> String {
    match (
        JS_PACKAGE.find(",\n  \"scripts\": {"),
        JS_PACKAGE.find("\n  }\n}"),
    ) {
        (Some(start), Some(end)) if start < end => {
            format!("{}{}", &JS_PACKAGE[..start], &JS_PACKAGE[end + 4..])
        }
        _ => JS_PACKAGE.to_owned(),
    }
}

/// The SDK's manifest as a member of the project's workspace.
fn vendored_sdk_manifest() -> String {
    RUST_SDK_MANIFEST.replace(
        RUST_SDK_WORKSPACE,
        "# Vendored by `wsprism new plugin`: built as part of the plugin project.\n",
    )
}

/// Writes a new project into `parent/<name>` and returns that folder.
///
/// # Errors
/// A bad name, a target that exists and is not an empty directory, or a
/// failed write. Nothing is written in the first two cases.
pub fn new_plugin(name: &str, lang: Lang, parent: &Path) -> Result<PathBuf, ScaffoldError> {
    let files = project(name, lang)?;
    let dir = parent.join(name);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ScaffoldError::Io { path, source }
    };
    if dir.exists() {
        let empty = dir.is_dir() && std::fs::read_dir(&dir).map_err(io(&dir))?.next().is_none();
        if !empty {
            return Err(ScaffoldError::NotEmpty(dir));
        }
    }
    for file in &files {
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, &file.contents).map_err(io(&path))?;
        if file.executable {
            make_executable(&path).map_err(io(&path))?;
        }
    }
    Ok(dir)
}

#[cfg(unix)]
fn make_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file<'a>(files: &'a [ProjectFile], path: &str) -> &'a ProjectFile {
        files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("{path} missing"))
    }

    #[test]
    fn names_follow_the_loader() {
        for ok in ["echo", "my-plugin_2", "0day", "-x", &"a".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a.b", "a/b", "..", "é", "a b", &"a".repeat(65)] {
            assert!(
                matches!(check_name(bad), Err(ScaffoldError::BadName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn crate_names_are_ones_cargo_takes() {
        assert_eq!(crate_name("echo-rs"), "echo-rs");
        assert_eq!(crate_name("0day"), "plugin-0day");
        assert_eq!(crate_name("-x"), "plugin--x");
        assert_eq!(crate_name("test"), "plugin-test");
        assert_eq!(crate_name("wsprism-plugin"), "plugin-wsprism-plugin");
    }

    #[test]
    fn every_project_has_the_wit_a_readme_and_an_executable_build() {
        for lang in [Lang::Rust, Lang::Js, Lang::Python] {
            let files = project("demo", lang).expect("project");
            assert_eq!(file(&files, "wit/wsprism-plugin.wit").contents, WIT);
            assert!(file(&files, "build.sh").executable);
            assert!(file(&files, "build.sh").contents.contains("demo.wasm"));
            let readme = &file(&files, "README.md").contents;
            for needle in [
                "plugins/demo.wasm",
                "svc: demo",
                "wsprism plugin call demo.wasm",
            ] {
                assert!(readme.contains(needle), "{lang}: README lacks {needle}");
            }
            for f in &files {
                for key in ["name", "crate", "lib", "world", "version", "files"] {
                    let placeholder = format!("{{{{{key}}}}}");
                    assert!(
                        !f.contents.contains(&placeholder),
                        "{lang}: {} keeps {placeholder}",
                        f.path
                    );
                }
            }
        }
    }

    #[test]
    fn rust_projects_vendor_the_sdk_as_a_member() {
        let files = project("0day", Lang::Rust).expect("project");
        let sdk = &file(&files, "sdk/rust/Cargo.toml").contents;
        assert!(sdk.contains("name = \"wsprism-plugin\""));
        assert!(
            !sdk.contains("[workspace]"),
            "the vendored SDK must not be its own workspace"
        );
        let manifest = &file(&files, "Cargo.toml").contents;
        assert!(manifest.contains("name = \"plugin-0day\""));
        assert!(manifest.contains("path = \"sdk/rust\""));
        assert!(
            file(&files, "build.sh")
                .contents
                .contains("plugin_0day.wasm")
        );
        assert_eq!(
            file(&files, "sdk/rust/src/testing.rs").contents,
            RUST_SDK_TESTING
        );
        let lock = &file(&files, "Cargo.lock").contents;
        for pinned in [
            "name = \"wsprism-plugin\"",
            "name = \"wit-bindgen\"",
            "name = \"serde_json\"",
        ] {
            assert!(lock.contains(pinned), "the lock lacks {pinned}");
        }
        for example in ["name = \"echo\"", "name = \"vote\"", "name = \"faults\""] {
            assert!(!lock.contains(example), "the lock keeps {example}");
        }
    }

    #[test]
    fn js_projects_pin_the_sdk_toolchain_without_its_scripts() {
        let files = project("demo", Lang::Js).expect("project");
        let package: serde_json::Value =
            serde_json::from_str(&file(&files, "package.json").contents).expect("valid JSON");
        let sdk: serde_json::Value = serde_json::from_str(JS_PACKAGE).expect("valid JSON");
        assert_eq!(package["devDependencies"], sdk["devDependencies"]);
        assert!(sdk.get("scripts").is_some() && package.get("scripts").is_none());
        assert_eq!(file(&files, "package-lock.json").contents, JS_LOCK);
    }

    /// The files under `sdk/<dir>` of the repository, `/`-separated and
    /// sorted, with their contents.
    fn sdk_files(dir: &str) -> Vec<(String, String)> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
            for entry in std::fs::read_dir(dir).expect("read sdk dir") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    walk(root, &path, out);
                } else {
                    let rel = path.strip_prefix(root).expect("inside root");
                    let rel = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/");
                    out.push((rel, std::fs::read_to_string(&path).expect("read")));
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk");
        let mut out = Vec::new();
        walk(&root, &root.join(dir), &mut out);
        out.sort();
        out
    }

    #[test]
    fn js_projects_ship_every_declaration_and_the_bindings_rewrite() {
        let files = project("demo", Lang::Js).expect("project");
        // Every declaration and every lib file of the SDK, as it is now.
        for dir in ["js/types", "js/lib"] {
            let sdk = sdk_files(dir);
            assert!(!sdk.is_empty(), "sdk/{dir} is empty");
            for (path, contents) in sdk {
                let inside = path.strip_prefix("js/").expect("under js/");
                assert_eq!(
                    file(&files, inside).contents,
                    contents,
                    "{inside} differs from sdk/{path}"
                );
            }
        }
        assert_eq!(JS_TYPES.len(), sdk_files("js/types").len());
        assert_eq!(JS_LIB.len(), sdk_files("js/lib").len());

        let build = &file(&files, "build.sh").contents;
        assert!(
            build.contains(
                "node --import \"$HERE/lib/register.mjs\" \
                 \"$TOOLS/node_modules/@bytecodealliance/componentize-js/src/cli.js\""
            ),
            "{build}"
        );
        assert!(build.contains("--world-name plugin \\\n"), "{build}");
        let app = &file(&files, "src/app.js").contents;
        assert!(app.contains("export function handle(msg)"), "{app}");
        assert!(!app.contains("onMessage"), "{app}");
        assert!(app.contains("/// <reference path=\"../types/plugin.d.ts\" />"));
        file(&files, "types/plugin.d.ts");
        file(&files, "types/plugin-with-hooks.d.ts");

        // The README's way to the hooks fits this build.sh.
        let readme = &file(&files, "README.md").contents;
        for needle in [
            "change `--world-name plugin` to\n`--world-name plugin-with-hooks`",
            "export const hooks = {",
            "import * as session from 'wsprism:plugin/session@0.2.0';",
            "`ext-lane-plugin-lifecycle`",
            "- `lib/` — ",
        ] {
            assert!(readme.contains(needle), "README lacks {needle}:\n{readme}");
        }
    }

    #[test]
    fn python_projects_handle_messages_in_world_plugin() {
        let files = project("demo", Lang::Python).expect("project");
        let build = &file(&files, "build.sh").contents;
        assert!(build.contains("-w plugin componentize app"), "{build}");
        let app = &file(&files, "src/app.py").contents;
        assert!(
            app.contains("def handle(self, msg: Message) -> None:"),
            "{app}"
        );
        assert!(!app.contains("on_message"), "{app}");
        let readme = &file(&files, "README.md").contents;
        for needle in [
            "change `-w plugin` to\n`-w plugin-with-hooks`",
            "class Hooks(exports.Hooks):",
            "from wit_world.imports import session",
            "`ext-lane-plugin-lifecycle`",
        ] {
            assert!(readme.contains(needle), "README lacks {needle}:\n{readme}");
        }
    }

    #[test]
    fn languages_parse_and_unknown_ones_are_named() {
        assert_eq!("python".parse::<Lang>(), Ok(Lang::Python));
        let e = "go".parse::<Lang>().expect_err("go");
        assert!(
            e.contains("`go`") && e.contains("rust, js or python"),
            "{e}"
        );
    }

    #[test]
    fn a_non_empty_target_is_refused_before_any_write() {
        let parent = std::env::temp_dir().join(format!("wsprism-scaffold-{}", std::process::id()));
        let dir = parent.join("demo");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("keep.txt"), "mine").expect("write");
        let r = new_plugin("demo", Lang::Js, &parent);
        assert!(matches!(r, Err(ScaffoldError::NotEmpty(_))), "{r:?}");
        assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 1);
        std::fs::remove_file(dir.join("keep.txt")).expect("rm");
        let made = new_plugin("demo", Lang::Js, &parent).expect("empty dir is fine");
        assert!(made.join("src/app.js").is_file());
        std::fs::remove_dir_all(&parent).expect("cleanup");
    }
}
