//! The crate's top-level modules form a DAG (one-way pipeline): this test reads
//! `src/`, collects every `crate::<module>` path of each top-level module
//! (test code excluded), and fails on any cycle between modules. It also keeps
//! the composition root (`gateway`) out of the connection pipeline.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules it names.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs")
            && p.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(p);
        }
    }
}

/// The code of a file without its `#[cfg(test)]` module (by convention the
/// last item of a file).
fn non_test_code(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// Every `crate::name` in `code`.
fn crate_paths(code: &str) -> impl Iterator<Item = &str> {
    code.match_indices("crate::").filter_map(move |(i, _)| {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            return None; // e.g. `$crate::` or `my_crate::`
        }
        let rest = &code[i + "crate::".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        Some(&rest[..end]).filter(|n| !n.is_empty())
    })
}

fn module_graph(src: &Path) -> Graph {
    let mut modules = BTreeSet::new();
    for e in std::fs::read_dir(src).expect("read src/").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".rs") {
            if stem != "lib" && stem != "main" {
                modules.insert(stem.to_owned());
            }
        } else if e.path().is_dir() && name != "bin" {
            modules.insert(name);
        }
    }
    let mut graph = Graph::new();
    for m in &modules {
        let mut files = Vec::new();
        let file = src.join(format!("{m}.rs"));
        if file.exists() {
            files.push(file);
        }
        rust_files(&src.join(m), &mut files);
        let edges = graph.entry(m.clone()).or_default();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("read source");
            for target in crate_paths(non_test_code(&text)) {
                if target != m && modules.contains(target) {
                    edges.insert(target.to_owned());
                }
            }
        }
    }
    graph
}

/// Strongly connected components with more than one module.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    // Two modules are in one cycle when each reaches the other.
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(m) = stack.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for m in graph.keys() {
        if done.contains(m) {
            continue;
        }
        let comp: Vec<String> = graph
            .keys()
            .filter(|o| *o == m || (reachable[m].contains(*o) && reachable[o].contains(m)))
            .cloned()
            .collect();
        done.extend(comp.iter().cloned());
        if comp.len() > 1 {
            out.push(comp);
        }
    }
    out
}

fn src_graph() -> Graph {
    module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn top_level_modules_form_a_dag() {
    let graph = src_graph();
    assert!(graph.len() > 10, "too few modules found: {graph:?}");
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "import cycles between top-level modules of src/ (each module must only \
         use modules further down the pipeline): {}",
        found
            .iter()
            .map(|c| c.join(" <-> "))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

#[test]
fn the_pipeline_does_not_reach_the_composition_root() {
    let graph = src_graph();
    let pipeline = [
        "transport",
        "session",
        "lanes",
        "services",
        "tenant",
        "realtime",
        "protocol",
        "policy",
        "config",
        "plugin_host",
        "auth",
        "backend",
        "obs",
        "error",
    ];
    for m in pipeline {
        let edges = graph.get(m).unwrap_or_else(|| panic!("no module `{m}`"));
        assert!(
            !edges.contains("gateway"),
            "`{m}` imports `gateway`; take what you use instead"
        );
    }
    // Down the pipeline, never up.
    let order = [
        "transport",
        "session",
        "lanes",
        "services",
        "tenant",
        "config",
    ];
    for (i, upper) in order.iter().enumerate() {
        for lower in &order[i + 1..] {
            assert!(
                !graph[*lower].contains(*upper),
                "`{lower}` imports `{upper}`, which sits above it"
            );
        }
    }
}

#[test]
fn the_checker_sees_a_cycle() {
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    g.entry("d".into()).or_default().insert("a".into());
    assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
    let code = "use crate::config::X; fn f() { $crate::no; crate::lanes::y(); }\n#[cfg(test)] use crate::gateway;";
    assert_eq!(
        crate_paths(non_test_code(code)).collect::<Vec<_>>(),
        ["config", "lanes"]
    );
}
