//! Where strategies are found by name, so that `--strategy beam` (or `beam.wasm`) works from any
//! directory: a path that names a file is taken as it is; a bare name is looked up in
//! `$DRPO_PLUGIN_PATH` (folders, separated as `PATH` is), then in the folder installed beside
//! the binary (`PREFIX/share/drpo/plugins` for `PREFIX/bin/drpo-host`), then in the checkout's
//! `target/plugins` when the binary runs from a checkout (`target/<profile>/drpo-host`).

use std::path::{Path, PathBuf};

/// The variable that lists extra strategy folders, searched first.
pub const PLUGIN_PATH_VARIABLE: &str = "DRPO_PLUGIN_PATH";

/// The folders strategies are looked up in, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    folders: Vec<PathBuf>,
}

/// A strategy name that matches no file.
#[derive(Debug, thiserror::Error)]
#[error(
    "no strategy `{name}`: it is not a file, and none of these folders holds {name} or \
     {name}.wasm: {searched}; `drpo-host describe` with no argument lists the strategies found, \
     and {PLUGIN_PATH_VARIABLE} adds folders",
    searched = display_folders(.folders)
)]
pub struct NotFound {
    /// The name as given.
    pub name: String,
    /// The folders searched, in order.
    pub folders: Vec<PathBuf>,
}

fn display_folders(folders: &[PathBuf]) -> String {
    if folders.is_empty() {
        return "(no folder to search)".into();
    }
    folders
        .iter()
        .map(|folder| folder.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Catalog {
    /// The folders of this process: `$DRPO_PLUGIN_PATH`, then those beside the running binary.
    pub fn of_this_process() -> Catalog {
        let listed = std::env::var_os(PLUGIN_PATH_VARIABLE).unwrap_or_default();
        let binary = std::env::current_exe().ok();
        Catalog::new(std::env::split_paths(&listed), binary.as_deref())
    }

    /// The folders `listed`, then those beside `binary`: its installed share folder, and its
    /// checkout's `target/plugins`.
    pub fn new(listed: impl IntoIterator<Item = PathBuf>, binary: Option<&Path>) -> Catalog {
        let mut folders: Vec<PathBuf> = listed
            .into_iter()
            .filter(|folder| !folder.as_os_str().is_empty())
            .collect();
        if let Some(prefix) = binary.and_then(Path::parent).and_then(Path::parent) {
            folders.push(prefix.join("share/drpo/plugins"));
            // `target/<profile>/drpo-host` in a checkout.
            if prefix.file_name().is_some_and(|name| name == "target") {
                folders.push(prefix.join("plugins"));
            }
        }
        Catalog { folders }
    }

    /// The folders searched, in order.
    pub fn folders(&self) -> &[PathBuf] {
        &self.folders
    }

    /// The strategy file `given` names, as an absolute path (so a run's record of it holds
    /// from any directory): `given` itself when it is a file, else the first `NAME` or
    /// `NAME.wasm` in the catalog's folders. A path with a folder in it that is not a file is
    /// returned as given, for the loader to report.
    pub fn find(&self, given: &Path) -> Result<PathBuf, NotFound> {
        if given.is_file() {
            return Ok(std::fs::canonicalize(given).unwrap_or_else(|_| given.to_owned()));
        }
        if given.components().count() != 1 {
            return Ok(given.to_owned());
        }
        let name = given.to_string_lossy().into_owned();
        let file_names = [name.clone(), format!("{name}.wasm")];
        self.folders
            .iter()
            .flat_map(|folder| file_names.iter().map(move |file| folder.join(file)))
            .find(|candidate| candidate.is_file())
            .map(|found| std::fs::canonicalize(&found).unwrap_or(found))
            .ok_or(NotFound {
                name,
                folders: self.folders.clone(),
            })
    }

    /// Every `.wasm` file of the catalog's folders, by name (the first of a name shadows the
    /// later ones, as in [`Catalog::find`]), in folder order and then by name.
    pub fn list(&self) -> Vec<(String, PathBuf)> {
        let mut found: Vec<(String, PathBuf)> = Vec::new();
        for folder in &self.folders {
            let Ok(entries) = std::fs::read_dir(folder) else {
                continue;
            };
            let mut here: Vec<(String, PathBuf)> = entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.is_file() && path.extension().is_some_and(|e| e == "wasm"))
                .filter_map(|path| {
                    let name = path.file_stem()?.to_string_lossy().into_owned();
                    Some((name, path))
                })
                .filter(|(name, _)| !found.iter().any(|(seen, _)| seen == name))
                .collect();
            here.sort();
            found.extend(here);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folders_beside_an_installed_binary_and_a_checkout_binary() {
        let installed = Catalog::new([], Some(Path::new("/opt/drpo/bin/drpo-host")));
        assert_eq!(
            installed.folders(),
            [PathBuf::from("/opt/drpo/share/drpo/plugins")]
        );
        let checkout = Catalog::new(
            [PathBuf::from("/mine"), PathBuf::new()],
            Some(Path::new("/src/drpo/target/release/drpo-host")),
        );
        assert_eq!(
            checkout.folders(),
            [
                PathBuf::from("/mine"),
                PathBuf::from("/src/drpo/target/share/drpo/plugins"),
                PathBuf::from("/src/drpo/target/plugins"),
            ]
        );
    }

    #[test]
    fn names_are_found_in_folder_order_with_or_without_the_extension() {
        let work = tempfile::tempdir().unwrap();
        let (first, second) = (work.path().join("first"), work.path().join("second"));
        std::fs::create_dir_all(&first).unwrap();
        std::fs::create_dir_all(&second).unwrap();
        std::fs::write(second.join("beam.wasm"), "b2").unwrap();
        std::fs::write(first.join("beam.wasm"), "b1").unwrap();
        std::fs::write(second.join("greedy.wasm"), "g").unwrap();
        std::fs::write(second.join("notes.txt"), "not a plugin").unwrap();
        let catalog = Catalog::new([first.clone(), second.clone()], None);
        let canonical = |path: PathBuf| std::fs::canonicalize(path).unwrap();
        assert_eq!(
            catalog.find(Path::new("beam")).unwrap(),
            canonical(first.join("beam.wasm"))
        );
        assert_eq!(
            catalog.find(Path::new("greedy.wasm")).unwrap(),
            canonical(second.join("greedy.wasm"))
        );
        let names: Vec<(String, PathBuf)> = catalog.list();
        assert_eq!(
            names,
            [
                ("beam".to_string(), first.join("beam.wasm")),
                ("greedy".to_string(), second.join("greedy.wasm")),
            ]
        );
    }

    #[test]
    fn a_path_is_taken_as_given_and_an_unknown_name_lists_the_folders() {
        let catalog = Catalog::new(
            [PathBuf::from("/nowhere/a"), PathBuf::from("/nowhere/b")],
            None,
        );
        assert_eq!(
            catalog.find(Path::new("plugins/beam.wasm")).unwrap(),
            PathBuf::from("plugins/beam.wasm")
        );
        let error = catalog.find(Path::new("bean")).unwrap_err().to_string();
        assert!(
            error.starts_with("no strategy `bean`: it is not a file, and none of these folders holds bean or bean.wasm: /nowhere/a, /nowhere/b;"),
            "{error}"
        );
    }
}
