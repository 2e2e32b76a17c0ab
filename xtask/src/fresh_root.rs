//! `cargo xtask fresh-root`: runs a command (by default the CI, `bash .ci/run`) in a fresh
//! Debian root that has only what a bare Debian machine with a Rust toolchain has, to prove that
//! the README's test command installs everything else itself. See `docs/testing.md`.
//!
//! - The pristine root is made once by `mmdebstrap --variant=apt` (Essential packages and apt,
//!   plus ca-certificates, gcc, libc6-dev and git) from Debian's mirror, for the host's release,
//!   and kept as a tarball `DIR.tar`; `DIR` is unpacked from it. `--fresh` unpacks it again, so
//!   nothing a previous run installed is left; `--new-snapshot` runs mmdebstrap again.
//! - Each run clones the repository's `HEAD` (a `git clone`, not a copy of the working tree) to
//!   `/root/quorate` in the root.
//! - The host's Rust toolchain is bind-mounted read-only (`RUSTUP_HOME` at `/opt/rust/rustup`, the
//!   rustup proxies at `/opt/rust/bin`, and cargo-nextest at `/usr/local/bin` unless
//!   `--bare-toolchain`). `CARGO_HOME` is the root's own empty `/root/.cargo`: the crate
//!   registry cache and `cargo install`ed tools are downloaded afresh and stay in the root.
//! - The host's CA bundle is mounted read-only at `/opt/rust/host-ca.crt` and named in
//!   `CARGO_HTTP_CAINFO`, for machines whose egress proxy intercepts TLS; the root's own
//!   `/etc/ssl` is untouched.
//! - Everything is mounted in a private mount namespace (`unshare --mount`): the root bound
//!   onto itself (so `/` is a mount point inside, as `unshare --propagation` needs), `/proc`, `/sys`,
//!   `/dev`, a tmpfs on `/run` (for `ip netns`), the host's `resolv.conf`. The mounts vanish
//!   when the command ends, whether it succeeds, fails or is interrupted, and never show on the
//!   host; processes the command left running in the root are killed first.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::phases::root;
use crate::setup;

const USAGE: &str = "usage: cargo xtask fresh-root [--dir DIR] [--fresh] [--new-snapshot] \
                     [--bare-toolchain] [--suite SUITE] [-- COMMAND...]";

/// Where the root goes when `--dir` is not given.
const DEFAULT_DIR: &str = "/var/tmp/quorate-fresh-root";

/// What a bare Debian machine with a Rust toolchain has beyond Essential and apt: TLS roots
/// (crates.io), a C toolchain (rustc links with `cc`; `ring` compiles C), and git.
const BASE_PACKAGES: &[&str] = &["ca-certificates", "gcc", "libc6-dev", "git"];

/// Written in the root when a run starts: a root that carries it is no longer fresh.
const USED_MARKER: &str = ".quorate-fresh-root-used";

/// Where the clone goes inside the root.
const CLONE: &str = "root/quorate";

/// Inside the root: the host's `RUSTUP_HOME` and rustup proxies (read-only).
const RUST_DIR: &str = "opt/rust";

struct Options {
    dir: PathBuf,
    fresh: bool,
    new_snapshot: bool,
    bare_toolchain: bool,
    suite: Option<String>,
    command: Vec<String>,
}

fn parse(args: &[String]) -> Result<Option<Options>> {
    let mut o = Options {
        dir: PathBuf::from(DEFAULT_DIR),
        fresh: false,
        new_snapshot: false,
        bare_toolchain: false,
        suite: None,
        command: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => o.dir = PathBuf::from(it.next().context("--dir needs a directory")?),
            "--suite" => o.suite = Some(it.next().context("--suite needs a name")?.clone()),
            "--fresh" => o.fresh = true,
            "--new-snapshot" => o.new_snapshot = true,
            "--bare-toolchain" => o.bare_toolchain = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--" => {
                o.command = it.cloned().collect();
                break;
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if !o.dir.is_absolute() {
        o.dir = std::env::current_dir()?.join(&o.dir);
    }
    Ok(Some(o))
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let Some(o) = parse(args)? else {
        return Ok(());
    };
    if !setup::is_root() {
        bail!("fresh-root needs root (mmdebstrap, mount and chroot): run it with sudo");
    }
    let repo = root()?;
    if o.dir.starts_with(&repo) || o.dir == Path::new("/") || o.dir.parent().is_none() {
        bail!(
            "--dir {} must be outside the repository {} (and not /): git and cargo would see it",
            o.dir.display(),
            repo.display()
        );
    }
    let started = Instant::now();
    println!("fresh-root: start {}", now());
    let snapshot = snapshot_path(&o.dir);

    if o.new_snapshot || !snapshot.exists() {
        make_snapshot(&snapshot, o.suite.as_deref())?;
    }
    let used = o.dir.join(USED_MARKER);
    if o.fresh || o.new_snapshot || !o.dir.join("etc").join("os-release").exists() {
        unpack(&snapshot, &o.dir)?;
    } else if let Ok(when) = std::fs::read_to_string(&used) {
        println!(
            "fresh-root: NOTE: {} was used before ({}): packages installed then are still \
             there, so this run proves nothing about a fresh machine; pass --fresh for the proof",
            o.dir.display(),
            when.trim()
        );
    }
    std::fs::write(&used, format!("{}\n", now()))
        .with_context(|| format!("writing {}", used.display()))?;
    prepare(&o.dir)?;
    clone(&repo, &o.dir)?;

    let command = if o.command.is_empty() {
        vec!["bash".to_owned(), ".ci/run".to_owned()]
    } else {
        o.command.clone()
    };
    println!(
        "fresh-root: running `{}` in {}",
        command.join(" "),
        o.dir.display()
    );
    let t = Instant::now();
    // A private copy of this executable: the one in the target directory may be rebuilt
    // meanwhile (by another checkout sharing CARGO_TARGET_DIR) without the inner subcommand.
    let mut exe = o.dir.as_os_str().to_owned();
    exe.push(".xtask");
    let exe = PathBuf::from(exe);
    std::fs::copy("/proc/self/exe", &exe)
        .with_context(|| format!("copying the xtask executable to {}", exe.display()))?;
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--"])
        .arg(exe)
        .arg(INNER)
        .arg(&o.dir)
        .arg(if o.bare_toolchain { "bare" } else { "nextest" })
        .arg("--")
        .args(&command);
    let status = c.status().context("starting unshare (util-linux)")?;
    println!(
        "fresh-root: command {} after {:.1} s",
        if status.success() {
            "succeeded"
        } else {
            "FAILED"
        },
        t.elapsed().as_secs_f64()
    );
    println!(
        "fresh-root: end {} (total {:.1} s)",
        now(),
        started.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!(
            "`{}` in the fresh root exited with {status}",
            command.join(" ")
        );
    }
    Ok(())
}

/// The hidden subcommand that runs inside the private mount namespace.
pub(crate) const INNER: &str = "fresh-root-inner";

/// In the private mount namespace: mount, chroot, run, kill what the command left behind.
pub(crate) fn inner(args: &[String]) -> Result<()> {
    let (dir, toolchain, command) = match args {
        [dir, toolchain, sep, command @ ..] if sep == "--" && !command.is_empty() => {
            (PathBuf::from(dir), toolchain.as_str(), command)
        }
        _ => bail!("{INNER} DIR bare|nextest -- COMMAND..."),
    };
    mounts(&dir, toolchain == "nextest")?;
    let clone_dir = format!("/{CLONE}");
    let mut env: Vec<String> = vec![
        "HOME=/root".into(),
        "USER=root".into(),
        "LOGNAME=root".into(),
        "LANG=C.UTF-8".into(),
        "TERM=dumb".into(),
        "CI=true".into(),
        format!("RUSTUP_HOME=/{RUST_DIR}/rustup"),
        "CARGO_HOME=/root/.cargo".into(),
        format!(
            "PATH=/root/.cargo/bin:/{RUST_DIR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ),
    ];
    if host_ca_bundle().is_some() {
        // Cargo only (crates.io over HTTPS); apt uses plain HTTP and the tests make their own CAs.
        env.push(format!("CARGO_HTTP_CAINFO=/{RUST_DIR}/host-ca.crt"));
    }
    let passed: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("QUORATE_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let status = Command::new("chroot")
        .arg(&dir)
        .args(["/usr/bin/env", "-i"])
        .args(&env)
        .args(&passed)
        .args(["/bin/bash", "-c", "cd \"$0\" && exec \"$@\""])
        .arg(&clone_dir)
        .args(command)
        .status()
        .context("starting chroot")?;
    kill_leftovers(&dir);
    if !status.success() {
        bail!("exited with {status}");
    }
    Ok(())
}

fn snapshot_path(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".tar");
    PathBuf::from(s)
}

fn now() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d %H:%M:%S %Z")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "(no date)".into())
}

/// The host's Debian codename, from `/etc/os-release`.
fn host_suite() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .map(|v| v.trim_matches('"').to_owned())
    };
    if field("ID").as_deref() != Some("debian") {
        bail!(
            "the host is not Debian (/etc/os-release ID); pass --suite bookworm (or another Debian suite)"
        );
    }
    field("VERSION_CODENAME")
        .filter(|c| !c.is_empty())
        .context("/etc/os-release has no VERSION_CODENAME; pass --suite")
}

/// mmdebstrap from Debian's mirror into `snapshot` (a tarball), timed.
fn make_snapshot(snapshot: &Path, suite: Option<&str>) -> Result<()> {
    setup::ensure_host_packages(&["mmdebstrap"])?;
    let suite = match suite {
        Some(s) => s.to_owned(),
        None => host_suite()?,
    };
    let mut sources = vec![format!("deb http://deb.debian.org/debian {suite} main")];
    if suite != "sid" && suite != "unstable" {
        sources.push(format!(
            "deb http://deb.debian.org/debian {suite}-updates main"
        ));
        sources.push(format!(
            "deb http://deb.debian.org/debian-security {suite}-security main"
        ));
    }
    let partial = snapshot_path(&snapshot.with_extension("partial"));
    let _ = std::fs::remove_file(&partial);
    let mut c = Command::new("mmdebstrap");
    c.args(["--variant=apt", "--mode=root", "--format=tar"])
        .arg(format!("--include={}", BASE_PACKAGES.join(",")))
        .arg(&suite)
        .arg(&partial)
        .args(&sources);
    let t = Instant::now();
    println!(
        "fresh-root: mmdebstrap {suite} -> {} (start {})",
        snapshot.display(),
        now()
    );
    crate::phases::run(&mut c)?;
    std::fs::rename(&partial, snapshot)
        .with_context(|| format!("renaming {} to {}", partial.display(), snapshot.display()))?;
    let size = std::fs::metadata(snapshot).map(|m| m.len()).unwrap_or(0);
    println!(
        "fresh-root: mmdebstrap took {:.1} s; snapshot {} ({} MB)",
        t.elapsed().as_secs_f64(),
        snapshot.display(),
        size / 1_000_000
    );
    Ok(())
}

/// Whether anything is mounted at or under `dir` in this mount namespace.
fn mounted_under(dir: &Path) -> Result<Vec<String>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let d = dir.to_string_lossy();
    Ok(info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| *m == d || m.starts_with(&format!("{d}/")))
        .map(str::to_owned)
        .collect())
}

/// Replaces `dir` by the pristine root from `snapshot`.
fn unpack(snapshot: &Path, dir: &Path) -> Result<()> {
    let mounted = mounted_under(dir)?;
    if !mounted.is_empty() {
        bail!(
            "not removing {}: something is mounted under it ({}); unmount it first",
            dir.display(),
            mounted.join(", ")
        );
    }
    if dir.exists() {
        let t = Instant::now();
        crate::phases::run(
            Command::new("rm")
                .args(["-rf", "--one-file-system"])
                .arg(dir),
        )?;
        println!(
            "fresh-root: removed the old root in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let t = Instant::now();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::phases::run(
        Command::new("tar")
            .args(["--numeric-owner", "-xpf"])
            .arg(snapshot)
            .arg("-C")
            .arg(dir),
    )?;
    println!(
        "fresh-root: unpacked the pristine root in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What a chroot needs that a machine has anyway: a `policy-rc.d` so that package scripts do not
/// start services inside the chroot (as Debian's container images do), and mount points.
fn prepare(dir: &Path) -> Result<()> {
    let policy = dir.join("usr/sbin/policy-rc.d");
    std::fs::write(
        &policy,
        "#!/bin/sh\n# fresh-root: no service starts in a chroot\nexit 101\n",
    )
    .with_context(|| format!("writing {}", policy.display()))?;
    crate::phases::run(Command::new("chmod").arg("755").arg(&policy))?;
    for d in [
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "root",
        "usr/local/bin",
        "opt/rust/rustup",
        "opt/rust/bin",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let resolv = dir.join("etc/resolv.conf");
    if std::fs::symlink_metadata(&resolv).is_err() {
        std::fs::write(&resolv, "")?;
    }
    Ok(())
}

/// A fresh clone of the repository's `HEAD` at `/root/quorate` in the root.
fn clone(repo: &Path, dir: &Path) -> Result<()> {
    let git = |args: &[&str]| -> Result<String> {
        let out = Command::new("git")
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running git {}", args.join(" ")))?;
        if !out.status.success() {
            bail!("`git {}` exited with {}", args.join(" "), out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let r = repo.to_string_lossy();
    let head = git(&["-C", &r, "rev-parse", "HEAD"])?;
    let dirty = git(&["-C", &r, "status", "--porcelain", "--untracked-files=no"])?;
    if !dirty.is_empty() {
        println!(
            "fresh-root: note: {} has uncommitted changes; the root gets commit {head} only",
            repo.display()
        );
    }
    let dest = dir.join(CLONE);
    if dest.exists() {
        std::fs::remove_dir_all(&dest).with_context(|| format!("removing {}", dest.display()))?;
    }
    let d = dest.to_string_lossy();
    git(&["clone", "-q", "--no-hardlinks", "--no-checkout", &r, &d])?;
    git(&["-C", &d, "fetch", "-q", &r, "HEAD"])?;
    git(&["-C", &d, "checkout", "-q", "--detach", "FETCH_HEAD"])?;
    let got = git(&["-C", &d, "rev-parse", "HEAD"])?;
    if got != head {
        bail!("the clone is at {got}, not at HEAD {head}");
    }
    println!(
        "fresh-root: cloned {} at {head} to /{CLONE}",
        repo.display()
    );
    Ok(())
}

/// The host's CA bundle, given to cargo in the root so that crates.io is reachable through a
/// TLS-intercepting egress proxy whose CA the host trusts (as on the machines this project is
/// built on). On an open network it changes nothing. `SSL_CERT_FILE`, else Debian's bundle.
fn host_ca_bundle() -> Option<PathBuf> {
    let p = std::env::var("SSL_CERT_FILE").map_or_else(
        |_| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
        PathBuf::from,
    );
    p.is_file().then_some(p)
}

/// Where the host's Rust toolchain is: `RUSTUP_HOME` and the directory of the rustup proxies.
fn host_toolchain() -> Result<(PathBuf, PathBuf)> {
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
    let rustup = std::env::var("RUSTUP_HOME").map_or_else(|_| home.join(".rustup"), PathBuf::from);
    let bin = std::env::var("CARGO_HOME")
        .map_or_else(|_| home.join(".cargo"), PathBuf::from)
        .join("bin");
    for p in [&rustup, &bin] {
        if !p.is_dir() {
            bail!(
                "no Rust toolchain at {} (set RUSTUP_HOME / CARGO_HOME)",
                p.display()
            );
        }
    }
    Ok((rustup, bin))
}

fn mount(args: &[&str], from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("mount")
        .args(args)
        .arg(from)
        .arg(to)
        .status()
        .context("starting mount")?;
    if !status.success() {
        bail!(
            "mount {} {} {} exited with {status}",
            args.join(" "),
            from.display(),
            to.display()
        );
    }
    Ok(())
}

fn bind_ro(from: &Path, to: &Path) -> Result<()> {
    mount(&["--bind"], from, to)?;
    let status = Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(to)
        .status()
        .context("starting mount")?;
    if !status.success() {
        bail!("remounting {} read-only exited with {status}", to.display());
    }
    Ok(())
}

/// The mounts, in this (private) mount namespace.
fn mounts(dir: &Path, with_nextest: bool) -> Result<()> {
    // The root itself becomes a mount point (bound onto itself), as `/` is on a machine:
    // inside the chroot, `unshare --mount --propagation private` (the chaos tests' network
    // world) changes the propagation of `/`, which fails when `/` is not a mount point.
    mount(&["--bind"], dir, dir)?;
    mount(&["-t", "proc"], Path::new("proc"), &dir.join("proc"))?;
    mount(&["--rbind"], Path::new("/sys"), &dir.join("sys"))?;
    mount(&["--rbind"], Path::new("/dev"), &dir.join("dev"))?;
    mount(&["-t", "tmpfs"], Path::new("tmpfs"), &dir.join("run"))?;
    std::fs::create_dir_all(dir.join("run/lock"))?;
    bind_ro(Path::new("/etc/resolv.conf"), &dir.join("etc/resolv.conf"))?;
    let ca = host_ca_bundle();
    if let Some(ca) = &ca {
        let to = dir.join(RUST_DIR).join("host-ca.crt");
        if !to.exists() {
            std::fs::write(&to, "")?;
        }
        bind_ro(ca, &to)?;
    }
    let (rustup, bin) = host_toolchain()?;
    bind_ro(&rustup, &dir.join(RUST_DIR).join("rustup"))?;
    bind_ro(&bin, &dir.join(RUST_DIR).join("bin"))?;
    if with_nextest {
        let found = Command::new("sh")
            .args(["-c", "command -v cargo-nextest"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let nextest = PathBuf::from(found);
        // In the proxies' directory it is mounted already.
        if nextest.is_file() && nextest.parent() != Some(bin.as_path()) {
            let to = dir.join("usr/local/bin/cargo-nextest");
            if !to.exists() {
                std::fs::write(&to, "")?;
            }
            bind_ro(&nextest, &to)?;
        }
    }
    Ok(())
}

/// Kills the processes whose root directory is `dir`: whatever the command left running.
fn kill_leftovers(dir: &Path) {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if std::fs::read_link(e.path().join("root")).ok().as_deref() == Some(canonical.as_path()) {
            println!("fresh-root: killing leftover process {pid} in the root");
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn options_parse_and_the_command_follows_the_separator() {
        let o = parse(&args(&[
            "--dir", "/x/root", "--fresh", "--", "cargo", "--fresh",
        ]))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no options"));
        assert_eq!(o.dir, PathBuf::from("/x/root"));
        assert!(o.fresh && !o.new_snapshot && !o.bare_toolchain);
        assert_eq!(o.command, args(&["cargo", "--fresh"]));
        assert!(parse(&args(&["--frehs"])).is_err());
        assert!(parse(&args(&["--dir"])).is_err());
        assert_eq!(
            snapshot_path(Path::new("/work/fresh-root")),
            PathBuf::from("/work/fresh-root.tar")
        );
    }
}
