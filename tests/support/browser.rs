//! Headless Chromium for the viewer tests: started as the environment notes say for a closed
//! network, bounded in time, and a reader of the tree nodes a page rendered.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Chromium, as the environment notes say to start it on a closed network.
pub fn chromium(profile: &Path) -> Command {
    let binary = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .unwrap_or_else(|| {
            panic!(
                "chromium is not on PATH: the tree.html test needs Debian's `chromium` package \
                 (./scripts/test installs it with apt-get)"
            )
        });
    let mut command = Command::new(binary);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// Runs a command to its end or for at most `limit`, returning stdout. Its output goes to
/// files, not pipes: a page's DOM outgrows a pipe's buffer, and a full pipe would stall it.
pub fn run_bounded(command: &mut Command, limit: Duration) -> String {
    let capture = tempfile::tempdir().unwrap();
    let (stdout, stderr) = (capture.path().join("out"), capture.path().join("err"));
    let mut child = command
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("start chromium");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{command:?} took more than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "{command:?}: {status}\n{}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    std::fs::read_to_string(&stdout).unwrap()
}

/// The opening tags `<g ...>` of the rendered tree nodes: (id, class).
pub fn rendered_nodes(dom: &str) -> Vec<(u64, String)> {
    let attribute = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(tag[start..start + tag[start..].find('"')?].to_owned())
    };
    dom.match_indices("<g ")
        .filter_map(|(at, _)| {
            let tag = &dom[at..at + dom[at..].find('>')?];
            let id = attribute(tag, "data-node-id")?.parse().ok()?;
            Some((id, attribute(tag, "class").unwrap_or_default()))
        })
        .collect()
}

/// The DOM of `page` (with `fragment`, e.g. `#select=3`) after its scripts ran.
pub fn dump_dom(page: &Path, fragment: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}{fragment}", page.display());
    run_bounded(
        chromium(profile.path()).arg("--dump-dom").arg(&url),
        Duration::from_secs(120),
    )
}
