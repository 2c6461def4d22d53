//! The strategy template, as a new author uses it: copy `templates/strategy`, build it with the
//! one documented command, and run the component with `drpo-host run --strategy` against the
//! loopback server; the run replays.

use std::path::Path;
use std::process::Command;

use drpo_tests::server::Server;
use drpo_tests::{
    assert_best_path, assert_replays, assert_rewards_differ, best_path_by, host, last_reward,
    output, result_json, roles_at, text, workspace,
};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_copy_of_the_template_builds_with_the_documented_command_and_runs() {
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("my-strategy");
    copy_dir(&workspace().join("templates/strategy"), &project);
    // The copy lives outside the checkout: point the kit dependency at it, as the docs say.
    let manifest = project.join("Cargo.toml");
    let kit = workspace().join("core-wasm/kit");
    let text_before = std::fs::read_to_string(&manifest).unwrap();
    let relative = r#"drpo-kit = { path = "../../core-wasm/kit" }"#;
    assert!(text_before.contains(relative), "{text_before}");
    let absolute = format!("drpo-kit = {{ path = {:?} }}", kit.display().to_string());
    std::fs::write(&manifest, text_before.replace(relative, &absolute)).unwrap();
    // The workspace's lock file pins the same dependency versions the plugins are built with
    // (and spares a registry lookup); a target directory that outlives the test keeps the
    // dependencies compiled between runs.
    std::fs::copy(workspace().join("Cargo.lock"), project.join("Cargo.lock")).unwrap();
    let target_dir = workspace().join("target/template-build");

    // The documented command, verbatim.
    let build = output(
        Command::new("cargo")
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .current_dir(&project)
            .env("CARGO_TARGET_DIR", &target_dir),
    );
    assert!(build.status.success(), "{}", text(&build));
    let component = target_dir.join("wasm32-wasip2/release/my_strategy.wasm");
    assert!(component.is_file(), "{} was not built", component.display());

    let server = Server::start();
    let dir = work.path().join("run");
    let run = output(
        host(&work.path().join("cache"))
            .arg("run")
            .arg("--strategy")
            .arg(&component)
            .arg("--log-dir")
            .arg(&dir)
            .args(roles_at(server.url()))
            .args(["--option", "candidates=2"]),
    );
    assert!(run.status.success(), "{}", text(&run));
    let result = result_json(&dir);
    assert_eq!(result["tree"].as_array().map(Vec::len), Some(3), "{result}");
    assert_rewards_differ(&result);
    // The template keeps the first prompt of the highest reward.
    assert_best_path(&result, best_path_by(&result, |_| true, last_reward));

    assert_replays(&work.path().join("cache"), &dir);
}
