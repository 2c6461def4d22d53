//! An installed drpo-host: `scripts/install` lays it out under a prefix, and from any directory,
//! with only `PREFIX/bin` on `PATH`, it finds its strategies by name.

use std::path::Path;
use std::process::Command;

use drpo_tests::server::Server;
use drpo_tests::{host_binary, output, roles_at, text, workspace};

/// `drpo-host` by name, from `cwd`, with only `prefix/bin` (and the system's own folders) on
/// `PATH`, no strategy folders named, and its compiled plugins cached under `cwd`.
fn installed(prefix: &Path, cwd: &Path) -> Command {
    let mut command = Command::new("drpo-host");
    command
        .current_dir(cwd)
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", prefix.join("bin").display()),
        )
        .env_remove("DRPO_PLUGIN_PATH")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("DRPO_DEFAULT_EMBEDDER")
        .env("DRPO_CACHE_DIR", cwd.join("cache"));
    command
}

#[test]
fn an_installed_host_runs_generates_evaluates_and_replays_from_any_directory() {
    let work = tempfile::tempdir().unwrap();
    let prefix = work.path().join("prefix");
    // The build the tests use (the dev profile) is installed as it is.
    let profile = if host_binary().parent().unwrap().ends_with("debug") {
        "dev"
    } else {
        "release"
    };
    let install = output(
        Command::new(workspace().join("scripts/install"))
            .env("DRPO_INSTALL_PROFILE", profile)
            .arg("--no-build")
            .arg(&prefix),
    );
    assert!(install.status.success(), "{}", text(&install));
    assert!(prefix.join("bin/drpo-host").is_file());
    assert!(prefix.join("share/drpo/plugins/beam.wasm").is_file());
    assert!(
        !prefix.join("share/drpo/plugins/testkit.wasm").exists(),
        "the tests' own plugin is not installed"
    );
    let read = |file: &str| std::fs::read_to_string(prefix.join(file)).unwrap();
    assert!(read("share/man/man1/drpo-host.1").contains(".TH drpo-host 1"));
    for (file, words) in [
        (
            "share/bash-completion/completions/drpo-host",
            "complete -F _drpo__host",
        ),
        ("share/zsh/site-functions/_drpo-host", "#compdef drpo-host"),
        (
            "share/fish/vendor_completions.d/drpo-host.fish",
            "complete -c drpo-host",
        ),
    ] {
        let script = read(file);
        assert!(script.contains(words), "{file}: {script}");
        assert!(
            script.contains("--strategy"),
            "{file} completes run's flags"
        );
    }

    let cwd = work.path().join("elsewhere");
    std::fs::create_dir(&cwd).unwrap();
    let server = Server::start();

    let listed = output(installed(&prefix, &cwd).arg("describe"));
    assert!(listed.status.success(), "{}", text(&listed));
    let listing = String::from_utf8_lossy(&listed.stdout);
    for name in [
        "beam", "greedy", "mcts", "pareto", "icl", "generate", "eval",
    ] {
        let line = format!(
            "{name:<12} {}",
            prefix
                .join(format!("share/drpo/plugins/{name}.wasm"))
                .display()
        );
        assert!(listing.contains(&line), "{line} missing:\n{listing}");
    }

    let run = output(
        installed(&prefix, &cwd)
            .args([
                "run",
                "--strategy",
                "beam.wasm",
                "--log-dir",
                "search",
                "--depth",
                "2",
            ])
            .args(roles_at(server.url())),
    );
    assert!(run.status.success(), "{}", text(&run));

    let generate = output(installed(&prefix, &cwd).args([
        "generate",
        "--model",
        "served",
        "--api-base",
        server.url(),
        "--log-dir",
        "answers-run",
        "--output",
        "answers.jsonl",
        "Do fish sleep?",
    ]));
    assert!(generate.status.success(), "{}", text(&generate));
    assert!(cwd.join("answers.jsonl").is_file());

    let eval = output(installed(&prefix, &cwd).args([
        "eval",
        "answers.jsonl",
        "--log-dir",
        "judged",
        "--",
        "--eval-model-name",
        "judge",
        "--api-base",
        server.url(),
    ]));
    assert!(eval.status.success(), "{}", text(&eval));

    for dir in ["search", "answers-run", "judged"] {
        let replay = output(installed(&prefix, &cwd).args(["replay", dir]));
        assert!(replay.status.success(), "{dir}: {}", text(&replay));
        assert!(
            text(&replay).contains("replay reproduced the run"),
            "{dir}: {}",
            text(&replay)
        );
    }

    let unknown =
        output(installed(&prefix, &cwd).args(["run", "--strategy", "bean", "--log-dir", "x"]));
    assert_eq!(unknown.status.code(), Some(1));
    let error = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(error.lines().count(), 1, "one error line: {error}");
    assert!(
        error.contains(&format!(
            "no strategy `bean`: it is not a file, and none of these folders holds bean or \
             bean.wasm: {}",
            prefix.join("share/drpo/plugins").display()
        )),
        "{error}"
    );
}

#[test]
fn a_missing_file_is_named_with_its_cause_once() {
    let work = tempfile::tempdir().unwrap();
    let gone = work.path().join("gone");
    for args in [
        vec!["describe".into(), gone.join("beam.wasm")],
        vec!["inspect".into(), gone.clone()],
    ] {
        let out = output(drpo_tests::host(&work.path().join("cache")).args(&args));
        assert_eq!(out.status.code(), Some(1));
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(error.contains(&*gone.to_string_lossy()), "{error}");
        assert_eq!(
            error.matches("No such file or directory").count(),
            1,
            "{error}"
        );
    }
}
