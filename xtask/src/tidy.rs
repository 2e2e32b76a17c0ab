//! Tidy tests: the workspace rules from `conventions.md`, checked as ordinary `#[test]`s.
//!
//! Each rule is a function from file contents to a list of findings, so that the rule itself is
//! tested on a bad example (see `rules_catch_bad_examples`) as well as run on the workspace.

use std::path::{Path, PathBuf};

use crate::phases::root;

/// Calls that read ambient time or randomness, or spawn untracked tasks: banned in pure cores.
const BANNED_IN_CORES: &[&str] = &[
    "Instant::now",
    "SystemTime::now",
    "thread_rng",
    "tokio::spawn",
];

/// Calls that start a task or thread nobody tracks. Product code spawns on a tokio-util
/// `TaskTracker` that its shutdown closes and waits on (conventions.md, "Sans-IO cores, thin
/// async shells"); `spawn_blocking` awaited in place is fine and not listed.
const BARE_SPAWNS: &[&str] = &[
    "tokio::spawn(",
    "tokio::task::spawn(",
    "spawn_local(",
    "thread::spawn(",
    "use tokio::spawn",
    "use tokio::task::spawn;",
    "use tokio::task::{spawn",
];

/// The bare spawns product crates may keep, each with why it is supervised anyway:
/// (file from the workspace root, text of the spawning line, reason). An entry that no longer
/// matches a line is itself a finding, so the list stays true.
const SPAWN_ALLOW_LIST: &[(&str, &str, &str)] = &[
    (
        "crates/quorate-api/src/client.rs",
        "let driver = tokio::spawn(conn);",
        "the `quorate ctl` client's per-request hyper connection driver: an owned JoinHandle \
         aborted once the response is read, and ended by hyper when the request's sender drops \
         on an error path; it holds one loopback socket and no state",
    ),
    (
        "crates/quorate-raft/src/rt.rs",
        "tokio::task::spawn(future)",
        "openraft's AsyncRuntime::spawn: openraft keeps every handle and joins its tasks in \
         Raft::shutdown, which RaftNode::shutdown awaits",
    ),
    (
        "crates/quorate-membership/src/node.rs",
        "tokio::spawn(task.run(cmd_rx, cancel.clone(), health))",
        "one owned JoinHandle: MembershipHandle::stopped awaits it for the task's fatal error; \
         shutdown and the last handle's drop cancel it",
    ),
    (
        "crates/quorate-raft/src/backend/local.rs",
        "tokio::spawn(expire_leases(Arc::clone(&inner)))",
        "the single-node proposer's expiry loop: an owned JoinHandle aborted when the proposer \
         drops; it holds only in-memory state (no file, no socket) that nothing waits for",
    ),
    (
        "crates/quorate-coord-api/src/conformance.rs",
        "Task(tokio::spawn(fut))",
        "the conformance suite's Task: an owned JoinHandle that every check joins, and that \
         aborts on drop when a check fails early",
    ),
    (
        "crates/quorate/src/demo.rs",
        "tokio::spawn(async move {",
        "the demo binary's reader of one agent's stdout: it ends at EOF, which the agent's \
         kill_on_drop child handle guarantees when the demo stops",
    ),
];

/// The marker a pure-core module carries near its top.
const PURE_CORE_MARKER: &str = concat!("// tidy", ":pure-core");

fn member_manifests(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("xtask").join("Cargo.toml")];
    if let Ok(rd) = std::fs::read_dir(root.join("crates")) {
        for e in rd.flatten() {
            out.push(e.path().join("Cargo.toml"));
        }
    }
    out.sort();
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

fn workspace_rust_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in ["crates", "xtask", "tests", "fuzz/fuzz_targets"] {
        rust_files(&root.join(d), &mut out);
    }
    out.sort();
    out
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// A member manifest must opt into the workspace lints.
fn check_lints_inherited(manifest: &str) -> Option<String> {
    let mut in_lints = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_lints = line == "[lints]";
            if line == "lints.workspace = true" {
                return None;
            }
            continue;
        }
        if in_lints && line.replace(' ', "") == "workspace=true" {
            return None;
        }
        if line.replace(' ', "") == "lints.workspace=true" {
            return None;
        }
    }
    Some("lacks `[lints] workspace = true`".into())
}

/// The folder of a crate must be its package name.
fn check_folder_is_name(folder: &str, manifest: &str) -> Option<String> {
    let name = manifest
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("name = "))
        .map(|v| v.trim_matches('"'));
    match name {
        Some(n) if n == folder => None,
        Some(n) => Some(format!(
            "package is named {n:?} but its folder is {folder:?}"
        )),
        None => Some("has no package name".into()),
    }
}

/// Every Rust file opens with a `//!` line saying what it is.
fn check_header(source: &str) -> Option<String> {
    if source.starts_with("//!") {
        None
    } else {
        Some("does not open with a `//!` line".into())
    }
}

/// No ignored tests and no tests that pass by panicking: assert the error value instead.
fn check_no_ignore(source: &str) -> Vec<String> {
    let ignore = concat!("#[", "ignore");
    let should_panic = concat!("#[", "should_panic");
    source
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(ignore) || l.contains(should_panic))
        .map(|(i, _)| format!("line {}: ignored or should-panic test", i + 1))
        .collect()
}

/// Pure cores read no clock, draw no ambient randomness and spawn nothing. The check stops at
/// the file's `#[cfg(test)]` module: a test may take an arbitrary `Instant` as its time base.
fn check_pure_core(source: &str) -> Vec<String> {
    if !source.contains(PURE_CORE_MARKER) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let test_module = concat!("#[cfg", "(test)]");
    for (i, line) in source
        .lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != test_module)
    {
        let code = line.split("//").next().unwrap_or("");
        for banned in BANNED_IN_CORES {
            if code.contains(banned) {
                out.push(format!("line {}: pure core calls {banned}", i + 1));
            }
        }
    }
    out
}

/// Bare spawns in a product crate's source file (`path` from the workspace root), outside the
/// file's `#[cfg(test)]` module and not on the allow-list.
fn check_bare_spawns(path: &str, source: &str, allow: &[(&str, &str, &str)]) -> Vec<String> {
    let test_module = concat!("#[cfg", "(test)]");
    source
        .lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != test_module)
        .filter_map(|(i, line)| {
            let code = line.split("//").next().unwrap_or("");
            let banned = BARE_SPAWNS.iter().find(|b| code.contains(*b))?;
            let allowed = allow
                .iter()
                .any(|(file, text, _)| *file == path && code.contains(text));
            (!allowed).then(|| {
                format!(
                    "line {}: bare `{banned}`: spawn on the component's TaskTracker and wait for \
                     it at shutdown, or add the line to SPAWN_ALLOW_LIST in xtask/src/tidy.rs with \
                     the reason it is supervised anyway",
                    i + 1
                )
            })
        })
        .collect()
}

/// A manifest that marks its crate as test support (`[package.metadata.quorate]`
/// `test-only = true`).
fn is_test_only(manifest: &str) -> bool {
    let mut in_meta = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_meta = line == "[package.metadata.quorate]";
            continue;
        }
        if in_meta && line.replace(' ', "") == "test-only=true" {
            return true;
        }
    }
    false
}

/// Module names a product crate must not export: test support lives in the test-only crates.
const TEST_SUPPORT_MODULES: &[&str] = &["bench", "testkit", "simulation", "chaos"];

/// A product crate's source declares no `pub mod bench|testkit|simulation|chaos`.
fn check_no_test_support_modules(source: &str) -> Vec<String> {
    source
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.trim();
            let name = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("pub(crate) mod "))?
                .trim_end_matches(';')
                .trim_end_matches('{')
                .trim();
            TEST_SUPPORT_MODULES.contains(&name).then(|| {
                format!(
                    "line {}: `mod {name}` in a product crate: test support goes in quorate-testkit, quorate-bench, quorate-chaos or quorate-sim",
                    i + 1
                )
            })
        })
        .collect()
}

/// A product crate's manifest lists no test-only crate under `[dependencies]` or
/// `[build-dependencies]` (dev-dependencies are where they belong).
fn check_no_test_only_normal_deps(manifest: &str, test_only: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut section = String::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        let normal = section == "[dependencies]"
            || section == "[build-dependencies]"
            || (section.starts_with("[target.") && !section.ends_with("dev-dependencies]"));
        if !normal {
            continue;
        }
        let name = line
            .split(['=', '.', ' '])
            .next()
            .unwrap_or("")
            .trim_matches('"');
        if test_only.iter().any(|t| t == name) {
            out.push(format!(
                "{section} lists the test-only crate {name}: make it a dev-dependency"
            ));
        }
    }
    out
}

#[track_caller]
fn assert_clean(findings: Vec<String>) {
    assert!(
        findings.is_empty(),
        "tidy found {} problem(s):\n  {}",
        findings.len(),
        findings.join("\n  ")
    );
}

#[test]
fn every_member_inherits_workspace_lints() {
    let root = root().unwrap_or_else(|e| panic!("{e}"));
    let findings = member_manifests(&root)
        .into_iter()
        .filter_map(|m| check_lints_inherited(&read(&m)).map(|f| format!("{}: {f}", m.display())))
        .collect();
    assert_clean(findings);
}

#[test]
fn folder_is_crate_name() {
    let root = root().unwrap_or_else(|e| panic!("{e}"));
    let findings = member_manifests(&root)
        .into_iter()
        .filter_map(|m| {
            let folder = m.parent()?.file_name()?.to_string_lossy().into_owned();
            check_folder_is_name(&folder, &read(&m)).map(|f| format!("{}: {f}", m.display()))
        })
        .collect();
    assert_clean(findings);
}

#[test]
fn every_rust_file_opens_with_a_doc_line() {
    let root = root().unwrap_or_else(|e| panic!("{e}"));
    let findings = workspace_rust_files(&root)
        .into_iter()
        .filter_map(|p| check_header(&read(&p)).map(|f| format!("{}: {f}", p.display())))
        .collect();
    assert_clean(findings);
}

#[test]
fn no_ignored_or_should_panic_tests() {
    let root = root().unwrap_or_else(|e| panic!("{e}"));
    let findings = workspace_rust_files(&root)
        .into_iter()
        .flat_map(|p| {
            check_no_ignore(&read(&p))
                .into_iter()
                .map(move |f| format!("{}: {f}", p.display()))
        })
        .collect();
    assert_clean(findings);
}

#[test]
fn pure_cores_touch_no_clock_rng_or_spawn() {
    let root = root().unwrap_or_else(|e| panic!("{e}"));
    let findings = workspace_rust_files(&root)
        .into_iter()
        .flat_map(|p| {
            check_pure_core(&read(&p))
                .into_iter()
                .map(move |f| format!("{}: {f}", p.display()))
        })
        .collect();
    assert_clean(findings);
}

#[test]
fn product_crates_export_no_test_support() {
    let root = root().unwrap_or_else(|e| panic!("{e}"));
    let mut findings = Vec::new();
    for m in member_manifests(&root) {
        let manifest = read(&m);
        let Some(dir) = m.parent() else { continue };
        if is_test_only(&manifest) || dir.ends_with("xtask") {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        for f in files {
            findings.extend(
                check_no_test_support_modules(&read(&f))
                    .into_iter()
                    .map(|x| format!("{}: {x}", f.display())),
            );
        }
    }
    assert_clean(findings);
}

#[test]
fn product_crates_spawn_only_tracked_tasks() {
    let root = root().unwrap_or_else(|e| panic!("{e}"));
    let mut findings = Vec::new();
    let mut used = vec![false; SPAWN_ALLOW_LIST.len()];
    for m in member_manifests(&root) {
        let manifest = read(&m);
        let Some(dir) = m.parent() else { continue };
        if is_test_only(&manifest) || dir.ends_with("xtask") {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        for f in files {
            let rel = f
                .strip_prefix(&root)
                .unwrap_or(&f)
                .to_string_lossy()
                .replace('\\', "/");
            let source = read(&f);
            for (i, (file, text, _)) in SPAWN_ALLOW_LIST.iter().enumerate() {
                if *file == rel && source.lines().any(|l| l.contains(text)) {
                    used[i] = true;
                }
            }
            findings.extend(
                check_bare_spawns(&rel, &source, SPAWN_ALLOW_LIST)
                    .into_iter()
                    .map(|x| format!("{rel}: {x}")),
            );
        }
    }
    for ((file, text, _), used) in SPAWN_ALLOW_LIST.iter().zip(used) {
        if !used {
            findings.push(format!(
                "SPAWN_ALLOW_LIST names `{text}` in {file}, which no longer has it: remove the entry"
            ));
        }
    }
    assert_clean(findings);
}

#[test]
fn test_only_crates_are_never_normal_dependencies() {
    let root = root().unwrap_or_else(|e| panic!("{e}"));
    let manifests: Vec<(PathBuf, String)> = member_manifests(&root)
        .into_iter()
        .map(|m| {
            let text = read(&m);
            (m, text)
        })
        .collect();
    let test_only: Vec<String> = manifests
        .iter()
        .filter(|(_, t)| is_test_only(t))
        .filter_map(|(m, _)| Some(m.parent()?.file_name()?.to_string_lossy().into_owned()))
        .collect();
    for expected in [
        "quorate-sim",
        "quorate-testkit",
        "quorate-bench",
        "quorate-chaos",
    ] {
        assert!(
            test_only.iter().any(|t| t == expected),
            "{expected} must be marked test-only ([package.metadata.quorate] test-only = true)"
        );
    }
    let findings = manifests
        .iter()
        .filter(|(m, t)| !is_test_only(t) && !m.parent().is_some_and(|d| d.ends_with("xtask")))
        .flat_map(|(m, t)| {
            check_no_test_only_normal_deps(t, &test_only)
                .into_iter()
                .map(move |f| format!("{}: {f}", m.display()))
        })
        .collect();
    assert_clean(findings);
}

#[test]
fn every_crate_is_tested_by_a_phase() {
    let root = root().unwrap_or_else(|e| panic!("{e}"));
    let layers = crate::phases::layer_crates();
    let findings = member_manifests(&root)
        .into_iter()
        .filter_map(|m| {
            let folder = m.parent()?.file_name()?.to_string_lossy().into_owned();
            (folder != "xtask" && !layers.contains(&folder.as_str())).then(|| {
                format!("{folder} is in no layer phase of xtask/src/phases.rs: its tests would never run in CI")
            })
        })
        .collect();
    assert_clean(findings);
}

#[test]
fn every_crate_is_named_in_architecture_md() {
    let root = root().unwrap_or_else(|e| panic!("{e}"));
    let arch = read(&root.join("ARCHITECTURE.md"));
    let findings = member_manifests(&root)
        .into_iter()
        .filter_map(|m| {
            let folder = m.parent()?.file_name()?.to_string_lossy().into_owned();
            (!arch.contains(&format!("### {folder}")))
                .then(|| format!("{folder} has no `### {folder}` section in ARCHITECTURE.md"))
        })
        .collect();
    assert_clean(findings);
}

#[test]
fn no_bincode_in_the_lock_file() {
    let root = root().unwrap_or_else(|e| panic!("{e}"));
    let lock = read(&root.join("Cargo.lock"));
    assert!(
        !lock.contains("name = \"bincode\""),
        "Cargo.lock contains bincode: the wire format is postcard (bincode is unmaintained)"
    );
}

#[test]
fn readme_names_the_test_command() {
    let root = root().unwrap_or_else(|e| panic!("{e}"));
    let readme = read(&root.join("README.md"));
    assert!(
        readme.contains("cargo xtask ci"),
        "README.md must name `cargo xtask ci`"
    );
    let ci = read(&root.join(".ci").join("run"));
    assert!(
        ci.contains("cargo xtask ci"),
        ".ci/run must run `cargo xtask ci`"
    );
}

/// Lines of a script that install Debian packages: the list must live in `xtask/src/setup.rs`
/// only, so that `cargo xtask setup` and the CI can never disagree.
fn check_no_package_install(script: &str) -> Vec<String> {
    script
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.contains(concat!("apt-get ", "install"))
                || l.contains(concat!("apt ", "install"))
                || l.contains(concat!("dpkg ", "-i"))
        })
        .map(|l| format!("installs packages itself (use `cargo xtask setup`): {l}"))
        .collect()
}

#[test]
fn setup_is_the_one_package_list() {
    let root = root().unwrap_or_else(|e| panic!("{e}"));
    let mut scripts = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root.join(".ci")) {
        scripts.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_file()));
    }
    scripts.sort();
    assert!(!scripts.is_empty(), ".ci/ has no scripts");
    let mut findings = Vec::new();
    for p in &scripts {
        for f in check_no_package_install(&read(p)) {
            findings.push(format!("{}: {f}", p.display()));
        }
    }
    assert_clean(findings);
    // The packages a fresh machine lacked in issue 13 (the build and the chaos tests) stay listed.
    let names = crate::setup::package_names();
    for needed in [
        "protobuf-compiler",
        "libprotobuf-dev",
        "nftables",
        "faketime",
        "iproute2",
    ] {
        assert!(names.contains(&needed), "setup::PACKAGES lacks {needed}");
    }
}

/// The rules themselves catch what they are for: a crate without inherited lints, a file
/// without a `//!` header, an ignored test, a pure core reading the clock, a misnamed folder.
#[test]
fn rules_catch_bad_examples() {
    let no_lints = "[package]\nname = \"quorate-x\"\n\n[dependencies]\nserde = \"1\"\n";
    assert!(check_lints_inherited(no_lints).is_some());
    let other_table = "[package]\nname = \"quorate-x\"\n[lints.rust]\nworkspace = true\n";
    assert!(check_lints_inherited(other_table).is_some());
    assert!(check_lints_inherited("[package]\n[lints]\nworkspace = true\n").is_none());

    assert!(check_header("use std::io;\n").is_some());
    assert!(check_header("// a plain comment\n//! late doc\n").is_some());
    assert!(check_header("//! What this is.\nuse std::io;\n").is_none());

    let ignored = concat!("#[test]\n#[", "ignore]\nfn t() {}\n");
    assert_eq!(check_no_ignore(ignored).len(), 1);
    let panicking = concat!(
        "#[test]\n#[",
        "should_panic(expected = \"x\")]\nfn t() {}\n"
    );
    assert_eq!(check_no_ignore(panicking).len(), 1);

    let core =
        format!("//! Core.\n{PURE_CORE_MARKER}\nfn f() {{ let t = std::time::Instant::now(); }}\n");
    assert_eq!(check_pure_core(&core).len(), 1);
    let shell = "//! Shell.\nfn f() { let t = std::time::Instant::now(); }\n";
    assert!(check_pure_core(shell).is_empty());
    let test_only = format!(
        "//! Core.\n{PURE_CORE_MARKER}\n#[cfg(test)]\nmod t {{ fn f() {{ Instant::now(); }} }}\n"
    );
    assert!(check_pure_core(&test_only).is_empty());
    let commented = format!("//! Core.\n{PURE_CORE_MARKER}\n// never call Instant::now here\n");
    assert!(check_pure_core(&commented).is_empty());

    let product = "//! A product crate.\npub mod engine;\npub mod bench;\nmod simulation;\n";
    assert_eq!(check_no_test_support_modules(product).len(), 1);
    assert_eq!(
        check_no_test_support_modules("pub(crate) mod testkit;\npub mod chaos {\n}\n").len(),
        2
    );
    assert!(check_no_test_support_modules("pub mod benchmarks_doc;\n").is_empty());

    let test_only = vec!["quorate-testkit".to_owned(), "quorate-sim".to_owned()];
    let bad = "[package]\nname = \"quorate-x\"\n[dependencies]\nquorate-testkit.workspace = true\nserde = \"1\"\n[dev-dependencies]\nquorate-sim.workspace = true\n";
    assert_eq!(check_no_test_only_normal_deps(bad, &test_only).len(), 1);
    let good = "[dependencies]\nserde = \"1\"\n[dev-dependencies]\nquorate-testkit = { workspace = true }\n";
    assert!(check_no_test_only_normal_deps(good, &test_only).is_empty());
    assert!(is_test_only(
        "[package]\n[package.metadata.quorate]\ntest-only = true\n"
    ));
    assert!(!is_test_only("[package]\nname = \"quorate-x\"\n"));

    let spawning = "//! Shell.\nfn f() {\n    tokio::spawn(run());\n    tracker.spawn(run());\n    std::thread::spawn(|| {});\n}\n#[cfg(test)]\nmod t { fn g() { tokio::spawn(x()); } }\n";
    let found = check_bare_spawns("crates/quorate-x/src/a.rs", spawning, &[]);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("line 3: bare `tokio::spawn(`"),
        "{found:?}"
    );
    let allow = [("crates/quorate-x/src/a.rs", "tokio::spawn(run())", "joined")];
    assert_eq!(
        check_bare_spawns("crates/quorate-x/src/a.rs", spawning, &allow).len(),
        1
    );
    assert_eq!(
        check_bare_spawns("crates/quorate-x/src/b.rs", spawning, &allow).len(),
        2,
        "the allow-list is per file"
    );
    assert!(check_bare_spawns("x.rs", "// tokio::spawn( in a comment\n", &[]).is_empty());

    assert!(check_folder_is_name("quorate-a", "name = \"quorate-b\"").is_some());
    assert!(check_folder_is_name("quorate-a", "name = \"quorate-a\"").is_none());

    let old_ci = concat!(
        "packages=(redis-server)\n  apt-get ",
        "install -y -qq --no-install-recommends \"${missing[@]}\"\n"
    );
    assert_eq!(check_no_package_install(old_ci).len(), 1);
    assert!(
        check_no_package_install("# apt-get install is xtask's job\ncargo xtask ci\n").is_empty()
    );
}
