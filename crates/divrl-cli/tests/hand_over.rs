//! The `divrl` command: the maths verbs run in this binary, which links no libtorch; every other
//! verb, `--help` and `--version` is handed to `divrl-torch` beside it with the same arguments,
//! output and exit code. Needs the whole workspace built (`cargo test --workspace` builds both).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn divrl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_divrl"))
}

/// `divrl-torch`, built beside `divrl` by the workspace.
fn divrl_torch() -> PathBuf {
    let p = divrl().with_file_name("divrl-torch");
    assert!(
        p.is_file(),
        "{} is missing: run the tests with --workspace (crate divrl-torch-cli builds it)",
        p.display()
    );
    p
}

fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().unwrap()
}

fn example(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/features")
        .join(name);
    p.to_str().unwrap().to_string()
}

/// The maths verbs' example calls from the README.
fn maths_calls() -> Vec<Vec<String>> {
    let (div, refs) = (example("diverse.npy"), example("reference.npy"));
    let cands = example("candidates.npy");
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    vec![
        s(&[
            "reward",
            "--generated",
            &div,
            "--reference",
            &refs,
            "--kind",
            "mmd",
        ]),
        s(&[
            "reward",
            "--generated",
            &div,
            "--reference",
            &refs,
            "--kind",
            "gp-mi",
            "--json",
        ]),
        s(&[
            "select",
            "--candidates",
            &cands,
            "--reference",
            &refs,
            "--size",
            "5",
            "--json",
        ]),
        s(&[
            "metrics",
            "--generated",
            &example("generated.npy"),
            "--reference",
            &example("heldout.npy"),
        ]),
    ]
}

#[test]
fn divrl_links_no_libtorch() {
    let out = Command::new("ldd")
        .arg(divrl())
        .output()
        .expect("ldd (libc-bin) is needed for this test");
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ldd failed: {libs}");
    // Match the library names only: ldd also prints hex load addresses, and
    // "0x…fec1000" contains "c10" (a CI run failed on exactly that).
    let names: Vec<&str> = libs
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for lib in ["libtorch", "libc10", "libcuda", "libgomp"] {
        assert!(
            !names.iter().any(|name| name.contains(lib)),
            "divrl links {lib}:\n{libs}"
        );
    }
    assert!(
        names.iter().any(|name| name.starts_with("libc.so")),
        "ldd output not understood (no libc.so):\n{libs}"
    );
}

#[test]
fn maths_verbs_run_without_divrl_torch_and_match_it() {
    // A folder holding `divrl` alone: the maths verbs must not need the sibling.
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("divrl");
    std::fs::copy(divrl(), &alone).unwrap();
    let torch = divrl_torch();
    for call in maths_calls() {
        let args: Vec<&str> = call.iter().map(String::as_str).collect();
        let here = run(&alone, &args);
        let there = run(&torch, &args);
        assert!(
            here.status.success(),
            "divrl {args:?}: {}",
            String::from_utf8_lossy(&here.stderr)
        );
        assert!(!here.stdout.is_empty());
        assert_eq!(here.stdout, there.stdout, "divrl {args:?}");
        assert_eq!(here.status.code(), there.status.code());
    }
    // Bad input to a maths verb: divrl's own one-line error, the same as divrl-torch's.
    let bad = [
        "reward",
        "--generated",
        "/nonexistent.npy",
        "--reference",
        "/x.npy",
    ];
    let (here, there) = (run(&alone, &bad), run(&torch, &bad));
    assert_eq!(here.status.code(), Some(2));
    assert_eq!(here.stderr, there.stderr);
    // Any other verb needs the sibling, and says so on one line.
    let out = run(&alone, &["sample", "--help"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("divrl: error: ") && err.contains("divrl-torch"),
        "{err}"
    );
}

/// The verb names listed under "Commands:" in `divrl-torch --help`.
fn verbs() -> Vec<String> {
    let help = String::from_utf8(run(&divrl_torch(), &["--help"]).stdout).unwrap();
    let list: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(list.len() >= 10, "{help}");
    list
}

#[test]
fn every_help_and_the_version_are_divrl_torchs() {
    let (d, t) = (divrl(), divrl_torch());
    let mut calls: Vec<Vec<String>> = vec![vec!["--help".into()], vec!["--version".into()], vec![]];
    for v in verbs() {
        calls.push(vec![v.clone(), "--help".into()]);
    }
    calls.push(vec!["experiment".into(), "debias".into(), "--help".into()]);
    for call in calls {
        let (a, b) = (run(&d, &to_str(&call)), run(&t, &to_str(&call)));
        assert_eq!(a.stdout, b.stdout, "divrl {call:?}");
        assert_eq!(a.stderr, b.stderr, "divrl {call:?}");
        assert_eq!(a.status.code(), b.status.code(), "divrl {call:?}");
    }
    let v = String::from_utf8(run(&d, &["--version"]).stdout).unwrap();
    assert_eq!(v.trim(), format!("divrl {}", env!("CARGO_PKG_VERSION")));
}

fn to_str(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn handed_over_errors_keep_the_one_line_contract() {
    for args in [
        vec!["no-such-verb"],
        vec![
            "sample",
            "--checkpoint",
            "/nonexistent/checkpoint",
            "--out",
            "/tmp/x.png",
        ],
    ] {
        let out = run(&divrl(), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("divrl: error: "))
            .collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert_eq!(err.lines().last(), Some(lines[0]), "{err}");
    }
}
