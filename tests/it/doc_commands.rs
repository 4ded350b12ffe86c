//! The shell commands of `README.md`, `keys/README.md` and `docs/*.md`, run as written.
//!
//! Every ```` ```sh ```` / ```` ```bash ```` / ```` ```console ```` block is read from the Markdown (nothing
//! is copied here). A block that cannot run on a machine without a cluster — kubectl, etcdctl, ssh to the
//! masters, systemctl, a node's own files — carries a marker on the line before its fence, so the choice is
//! made in the document, where a reviewer sees it:
//!
//! ```text
//! <!-- doc-test: skip (needs a cluster) -->
//! ```
//!
//! Every other block runs, in document order, each in `bash -e -o pipefail`, in a fresh copy of the
//! repository per document (the files git would check out, with the modes a checkout gives: 0644, or 0755
//! when executable), and must exit 0. In a ```` ```console ```` block the commands are the lines after
//! `$ `; the rest is output and is not compared.
//!
//! The environment of a run, and the only rewriting of a command:
//! - `gm-kms-plugin` on `PATH` is the binary this `cargo test` built (the docs use the binary of
//!   `cargo build --release` the same way); `GM_KMS_PLUGIN` names it for `scripts/run-dev.sh`, which
//!   otherwise builds one.
//! - `/tmp/` in a command, and in the copy's `keys/dev-config.json`, becomes a directory of this test, and
//!   the development health port `127.0.0.1:8787` a free port: runs of the suite in parallel, or a
//!   developer's `scripts/run-dev.sh`, must not meet on one socket or port.
//! - `HOME` is a directory of this test.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::plugin::{binary, repo};

/// The marker of a block that is not run, with its reason in parentheses.
const SKIP: &str = "<!-- doc-test: skip (";

/// Longest a block may run.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// One fenced shell block of a Markdown file.
#[derive(Debug, Clone)]
struct Block {
    file: String,
    /// 1-based line of the opening fence.
    line: usize,
    lang: String,
    /// The block's lines, the fence's indentation removed.
    text: String,
    /// The reason of a skip marker.
    skip: Option<String>,
}

impl Block {
    /// The commands: the whole block for `sh`/`bash`/`shell`; the `$ ` lines (and their `\`
    /// continuations) for `console`.
    fn script(&self) -> String {
        if self.lang != "console" {
            return self.text.clone();
        }
        let mut out = String::new();
        let mut continued = false;
        for l in self.text.lines() {
            if let Some(cmd) = l.strip_prefix("$ ") {
                out.push_str(cmd);
                out.push('\n');
                continued = cmd.ends_with('\\');
            } else if continued {
                out.push_str(l);
                out.push('\n');
                continued = l.ends_with('\\');
            }
        }
        out
    }

    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

const SHELL: &[&str] = &["sh", "bash", "shell", "console"];

/// The fenced blocks of a Markdown text with a shell language, in order. A skip marker that is not right
/// before a shell block, or one without a reason, is an error.
fn shell_blocks(file: &str, text: &str) -> Result<Vec<Block>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut pending_skip: Option<(usize, String)> = None;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if let Some(rest) = trimmed.strip_prefix(SKIP) {
            let reason = rest.strip_suffix(") -->").ok_or_else(|| {
                format!("{file}:{}: write the marker as {SKIP}REASON) -->", i + 1)
            })?;
            if reason.trim().is_empty() {
                return Err(format!("{file}:{}: a skip needs its reason", i + 1));
            }
            pending_skip = Some((i + 1, reason.to_string()));
            i += 1;
            continue;
        }
        if let Some(info) = trimmed.strip_prefix("```") {
            let indent = lines[i].len() - trimmed.len();
            let lang = info.split_whitespace().next().unwrap_or("").to_string();
            let start = i;
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                let l = lines[i];
                body.push(
                    l.get(indent.min(l.len() - l.trim_start().len())..)
                        .unwrap_or(l),
                );
                i += 1;
            }
            let skip = match pending_skip.take() {
                Some((at, _)) if !SHELL.contains(&lang.as_str()) => {
                    return Err(format!(
                        "{file}:{at}: a skip marker before a ```{lang} block, which is never run"
                    ));
                }
                other => other.map(|(_, reason)| reason),
            };
            if SHELL.contains(&lang.as_str()) {
                out.push(Block {
                    file: file.to_string(),
                    line: start + 1,
                    lang,
                    text: body.join("\n") + "\n",
                    skip,
                });
            }
            i += 1;
            continue;
        }
        if let Some((at, _)) = &pending_skip
            && !trimmed.is_empty()
        {
            return Err(format!(
                "{file}:{at}: a skip marker must be on the line right before a shell block's fence"
            ));
        }
        i += 1;
    }
    match pending_skip {
        Some((at, _)) => Err(format!("{file}:{at}: a skip marker at the end of the file")),
        None => Ok(out),
    }
}

/// The Markdown files whose commands an operator or developer is told to run.
fn documents() -> Vec<(String, String)> {
    let mut files = vec!["README.md".to_string(), "keys/README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(repo().join(&f)).unwrap();
            (f, text)
        })
        .collect()
}

/// A copy of the repository as a fresh clone has it: the files git tracks (and new ones not ignored),
/// with a checkout's modes.
fn fresh_copy(dst: &Path) {
    let out = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(repo())
        .output()
        .expect("git ls-files (the doc test copies what git would check out)");
    assert!(
        out.status.success(),
        "git ls-files: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut n = 0;
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).unwrap();
        let src = repo().join(name);
        let Ok(meta) = std::fs::symlink_metadata(&src) else {
            continue; // deleted in the working tree
        };
        if !meta.is_file() {
            continue;
        }
        let to = dst.join(name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&src, &to).unwrap();
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).unwrap();
        n += 1;
    }
    assert!(n > 50, "only {n} files copied");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where one document's commands run, and the rewriting of the module doc.
struct Sandbox {
    _dir: tempfile::TempDir,
    clone: PathBuf,
    tmp: PathBuf,
    bin: PathBuf,
    home: PathBuf,
    port: u16,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clone = dir.path().join("gm-kms-plugin");
        let tmp = dir.path().join("tmp");
        let bin = dir.path().join("bin");
        let home = dir.path().join("home");
        for d in [&clone, &tmp, &bin, &home] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::os::unix::fs::symlink(binary(), bin.join("gm-kms-plugin")).unwrap();
        fresh_copy(&clone);
        let s = Sandbox {
            _dir: dir,
            clone,
            tmp,
            bin,
            home,
            port: free_port(),
        };
        let dev = s.clone.join("keys/dev-config.json");
        let text = std::fs::read_to_string(&dev).unwrap();
        std::fs::write(&dev, s.map(&text)).unwrap();
        s
    }

    /// The rewriting of the module doc: `/tmp/` and the development health port.
    fn map(&self, text: &str) -> String {
        text.replace("/tmp/", &format!("{}/", self.tmp.display()))
            .replace("127.0.0.1:8787", &format!("127.0.0.1:{}", self.port))
    }

    /// Runs one block; its exit status, stdout and stderr.
    fn run(&self, block: &Block) -> (Option<i32>, String, String) {
        let script = self.map(&block.script());
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = Command::new("bash")
            .args(["-e", "-o", "pipefail", "-c", &script])
            .current_dir(&self.clone)
            .env("PATH", path)
            .env("HOME", &self.home)
            .env("TMPDIR", &self.tmp)
            .env("GM_KMS_PLUGIN", binary())
            .env_remove("RUST_LOG")
            .env_remove("CARGO_TARGET_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: whatever the block leaves running (a server sent to the background)
            // is stopped with it.
            .process_group(0)
            .spawn()
            .expect("bash");
        let pgid = child.id();
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut s).ok();
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut s).ok();
            s
        });
        let deadline = Instant::now() + BLOCK_TIMEOUT;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s.code();
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The group: the block's leftovers (and the block itself, on a timeout).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = child.wait();
        (status, out.join().unwrap(), err.join().unwrap())
    }
}

/// Every document's shell blocks, run or skipped as marked; the list of what ran is printed.
#[test]
fn documented_commands_run_as_written() {
    let mut ran: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut failures = Vec::new();
    for (file, text) in documents() {
        let blocks = shell_blocks(&file, &text).unwrap_or_else(|e| panic!("{e}"));
        if blocks.iter().all(|b| b.skip.is_some()) {
            skipped.extend(
                blocks
                    .iter()
                    .map(|b| format!("{}: {}", b.at(), b.skip.as_deref().unwrap())),
            );
            continue;
        }
        let sandbox = Sandbox::new();
        for b in &blocks {
            if let Some(reason) = &b.skip {
                skipped.push(format!("{}: {reason}", b.at()));
                continue;
            }
            let started = Instant::now();
            let (status, out, err) = sandbox.run(b);
            let commands: Vec<String> = b
                .script()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect();
            ran.entry(b.at()).or_default().extend(commands);
            if status != Some(0) {
                failures.push(format!(
                    "{} exited {status:?} after {:?}:\n--- block\n{}--- stdout\n{out}--- stderr\n{err}",
                    b.at(),
                    started.elapsed(),
                    b.script()
                ));
            }
        }
    }
    println!("commands run ({} blocks):", ran.len());
    for (at, commands) in &ran {
        for c in commands {
            println!("  {at}: {c}");
        }
    }
    println!("blocks skipped ({}):", skipped.len());
    for s in &skipped {
        println!("  {s}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The quick start and the hand-run commands of the README are among what ran.
    assert!(
        ran.keys().filter(|k| k.starts_with("README.md:")).count() >= 2,
        "{ran:?}"
    );
}

/// Lines of a skip marker anywhere but right before a shell block are refused; a console block's commands
/// are its `$ ` lines.
#[test]
fn markers_and_console_blocks_are_read_as_documented() {
    let md = "text\n\n<!-- doc-test: skip (needs a cluster) -->\n```sh\nkubectl get pods\n```\n\n   ```console\n   $ echo a \\\n     b\n   a b\n   $ true\n   ```\n";
    let b = shell_blocks("x.md", md).unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].skip.as_deref(), Some("needs a cluster"));
    assert_eq!(b[0].line, 4);
    assert!(b[1].skip.is_none());
    assert_eq!(b[1].script(), "echo a \\\n  b\ntrue\n");
    let dangling = "<!-- doc-test: skip (x) -->\nsome prose\n```sh\nls\n```\n";
    assert!(
        shell_blocks("y.md", dangling)
            .unwrap_err()
            .contains("right before")
    );
    let no_reason = "<!-- doc-test: skip () -->\n```sh\nls\n```\n";
    assert!(
        shell_blocks("z.md", no_reason)
            .unwrap_err()
            .contains("reason")
    );
    let before_json = "<!-- doc-test: skip (x) -->\n```json\n{}\n```\n";
    assert!(
        shell_blocks("j.md", before_json)
            .unwrap_err()
            .contains("never run")
    );
}
