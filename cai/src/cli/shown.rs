//! Paths as a person reads them in the command's output: `examples/../out/job` is `out/job`, and
//! an absolute path under the directory the command was run in is relative to it, so a printed
//! path can be pasted into the same shell.

use std::path::{Component, Path, PathBuf};

/// `path` without `.` and `dir/..` pairs, relative to the current directory when it lies under
/// it. Only the text changes (no symbolic link is followed), so a path that names a link keeps
/// naming it.
pub(super) fn shown(path: &Path) -> String {
    let normal = lexically_normal(path);
    let relative = std::env::current_dir()
        .ok()
        .and_then(|cwd| {
            normal
                .strip_prefix(lexically_normal(&cwd))
                .ok()
                .map(Path::to_path_buf)
        })
        .filter(|relative| !relative.as_os_str().is_empty())
        .unwrap_or(normal);
    relative.display().to_string()
}

fn lexically_normal(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                let last_is_normal =
                    matches!(normal.components().next_back(), Some(Component::Normal(_)));
                if last_is_normal {
                    normal.pop();
                } else if !matches!(normal.components().next_back(), Some(Component::RootDir)) {
                    normal.push("..");
                }
            }
            other => normal.push(other.as_os_str()),
        }
    }
    if normal.as_os_str().is_empty() {
        normal.push(".");
    }
    normal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_dot_pairs_and_dots_go_and_leading_dot_dots_stay() {
        for (path, normal) in [
            (
                "examples/../out/quickstart-pairwise/report.html",
                "out/quickstart-pairwise/report.html",
            ),
            ("./out/./job", "out/job"),
            ("../elsewhere/x", "../elsewhere/x"),
            ("a/../../b", "../b"),
            ("/a/../b", "/b"),
            ("/..", "/"),
            ("a/..", "."),
        ] {
            assert_eq!(
                lexically_normal(Path::new(path)),
                Path::new(normal),
                "{path}"
            );
        }
    }

    #[test]
    fn a_path_under_the_current_directory_is_shown_relative_to_it() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            shown(&cwd.join("out").join("..").join("out/job")),
            "out/job"
        );
        assert_eq!(
            shown(Path::new("/definitely/elsewhere/../x")),
            "/definitely/x"
        );
    }
}
