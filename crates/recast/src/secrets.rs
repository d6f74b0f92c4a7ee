//! Reading the values of a spec's secrets on the machine that runs recast: `from_file`,
//! `from_env`, `from_command`. Only the secrets a service uses are read. Errors name the
//! secret and its source, never a value.

use recast_spec::{Project, SecretSource};
use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The most a secret may hold.
const MAX_SECRET: usize = 1 << 20;
/// How long a `from_command` may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The value of every secret a service of `project` uses.
pub fn read(project: &Project) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for name in project.services.values().flat_map(|s| s.secrets()) {
        if out.contains_key(name) {
            continue;
        }
        let secret = project
            .secrets
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("secret {name} is not declared"))?;
        let value = match &secret.source {
            SecretSource::File(p) => crate::output::read_small_bytes(p, "the file of secret")
                .map_err(|e| anyhow::anyhow!("secret {name}: {e:#}"))?,
            SecretSource::Env(var) => std::env::var_os(var)
                .map(std::os::unix::ffi::OsStringExt::into_vec)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "secret {name}: the environment variable {var} is not set\n  hint: export {var}=… before running recast"
                    )
                })?,
            SecretSource::Command(argv) => command(name, argv)?,
        };
        if value.len() > MAX_SECRET {
            anyhow::bail!("secret {name} is larger than 1 MiB");
        }
        out.insert(name.to_string(), value);
    }
    Ok(out)
}

/// What `argv` prints on stdout (at most [`MAX_SECRET`] bytes, one trailing newline
/// removed); it must exit 0 within [`COMMAND_TIMEOUT`]. Its stderr goes to ours.
fn command(name: &str, argv: &[String]) -> anyhow::Result<Vec<u8>> {
    let shown = argv.first().map_or("", String::as_str);
    let mut child = Command::new(shown)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| anyhow::anyhow!("secret {name}: cannot run {shown}: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = (&mut stdout)
            .take(MAX_SECRET as u64 + 1)
            .read_to_end(&mut buf);
        // Whatever it prints beyond the limit is drained, so it never blocks on a full pipe.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        r.map(|_| buf)
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "secret {name}: {shown} did not finish within {}s",
                COMMAND_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = reader
        .join()
        .map_err(|_| anyhow::anyhow!("secret {name}: reading {shown}'s output failed"))??;
    if !status.success() {
        anyhow::bail!("secret {name}: {shown} failed ({status})");
    }
    if out.len() > MAX_SECRET {
        anyhow::bail!("secret {name}: {shown} printed more than 1 MiB");
    }
    if out.ends_with(b"\n") {
        out.pop();
        if out.ends_with(b"\r") {
            out.pop();
        }
    }
    Ok(out)
}

/// The keyed digest of every secret in `values`, with the data directory's key.
pub fn digests(
    data_dir: &std::path::Path,
    values: &BTreeMap<String, Vec<u8>>,
) -> anyhow::Result<BTreeMap<String, String>> {
    if values.is_empty() {
        return Ok(BTreeMap::new());
    }
    let keys = recast_server::sealed::Keyring::open(&recast_api::DataDir::new(data_dir))
        .map_err(anyhow::Error::msg)?;
    Ok(values
        .iter()
        .map(|(k, v)| (k.clone(), keys.digest(k, v)))
        .collect())
}
