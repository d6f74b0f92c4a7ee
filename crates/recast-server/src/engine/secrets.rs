//! Secrets and promotions at apply: values sealed for the release records, opened again for
//! each instance; the image another environment runs, for `recast promote-release`.

use super::*;
use crate::record::SealedSecret;
use crate::sealed::Keyring;
use recast_api::v1::Promotion;

/// What an apply is asked besides the spec path: inputs, secret values, a promotion.
pub struct ApplyInput {
    pub path: PathBuf,
    pub inputs: recast_spec::Inputs,
    /// Secret name → value, as the CLI read them.
    pub secrets: BTreeMap<String, Vec<u8>>,
    pub promote: Option<Promotion>,
    /// Apply only if the plan has this fingerprint (a saved plan).
    pub expect_plan: Option<String>,
}

impl ApplyInput {
    /// A plain apply of the spec at `path` (no environment, variables or secrets).
    pub fn path(path: &Path) -> ApplyInput {
        ApplyInput {
            path: path.to_path_buf(),
            inputs: recast_spec::Inputs::default(),
            secrets: BTreeMap::new(),
            promote: None,
            expect_plan: None,
        }
    }
}

impl Ctl {
    /// The data directory's key for secrets, opened (or created) on first use.
    pub(crate) fn keyring(&self) -> Result<&Keyring, String> {
        self.keyring
            .get_or_init(|| Keyring::open(&self.data_dir))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Every secret the spec's services use, sealed with its keyed digest. A secret with no
    /// value sent is an error naming it.
    pub(super) fn seal_secrets(
        &self,
        project: &Project,
        values: &BTreeMap<String, Vec<u8>>,
    ) -> Result<BTreeMap<String, SealedSecret>, ServerError> {
        let used: std::collections::BTreeSet<&str> = project
            .services
            .values()
            .flat_map(|s| s.secrets())
            .collect();
        let mut out = BTreeMap::new();
        for name in used {
            let Some(value) = values.get(name) else {
                return Err(ServerError::Invalid(format!(
                    "secret {name} has no value\n  hint: recast apply reads every secret a service uses (from_file, from_env, from_command) and sends it; an API client must send it in `secrets`"
                )));
            };
            let keys = self.keyring().map_err(ServerError::Invalid)?;
            out.insert(
                name.to_string(),
                SealedSecret {
                    digest: keys.digest(name, value),
                    sealed: keys.seal(name, value),
                },
            );
        }
        Ok(out)
    }

    /// The secret environment and files of an instance of `run`, opened from its record.
    pub(super) fn instance_secrets(
        &self,
        run: &Run,
    ) -> Result<(BTreeMap<String, String>, Vec<recast_runtime::SecretFile>), String> {
        let s = &run.service;
        if s.secret_env.is_empty() && s.secret_files.is_empty() {
            return Ok(Default::default());
        }
        let open = |name: &str| -> Result<Vec<u8>, String> {
            let sealed = run.secrets.get(name).ok_or_else(|| {
                format!(
                    "release {} of {} records no value for secret {name}",
                    run.number, s.name
                )
            })?;
            self.keyring()?.open_sealed(name, &sealed.sealed)
        };
        let mut env = BTreeMap::new();
        for (var, name) in &s.secret_env {
            let value = String::from_utf8(open(name)?)
                .ok()
                .filter(|v| !v.contains('\0'))
                .ok_or_else(|| {
                    format!("secret {name} cannot be the value of ${var}: it is not text without NUL bytes")
                })?;
            env.insert(var.clone(), value);
        }
        let mut files = Vec::new();
        for f in &s.secret_files {
            files.push(recast_runtime::SecretFile {
                path: f.path.clone(),
                data: open(&f.secret)?,
                mode: f.mode,
            });
        }
        Ok((env, files))
    }

    /// `recast promote-release`: the image digest `service` runs live and healthy in the
    /// environment `p.from` of the same project (`name` is the target's `PROJECT@ENV`).
    pub(super) fn promotion_source(
        &self,
        project: &Project,
        name: &str,
        p: &Promotion,
    ) -> Result<String, String> {
        let svc = project
            .services
            .get(&p.service)
            .ok_or_else(|| format!("the spec has no service \"{}\"", p.service))?;
        if project.environment.as_deref() == Some(p.from.as_str()) {
            return Err(format!("cannot promote from {} to itself", p.from));
        }
        if !project.environments.contains_key(&p.from) {
            let names: Vec<&str> = project.environments.keys().map(String::as_str).collect();
            return Err(format!(
                "no environment \"{}\" is declared (declared: {})",
                p.from,
                names.join(", ")
            ));
        }
        let source = format!("{}@{}", plan::base_name(name), p.from);
        let what = format!("service {} in {}", p.service, p.from);
        let row = self
            .state
            .current(&source, &p.service)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{what} has no live release to promote"))?;
        if row.outcome != ReleaseOutcome::Succeeded {
            return Err(format!(
                "release {} of {what} is {}, not live",
                row.number, row.outcome
            ));
        }
        let record = ReleaseRecord::read(&row).map_err(|e| e.to_string())?;
        if record.image != svc.image {
            return Err(format!(
                "{what} runs image {}; the spec's service runs image {}",
                record.image, svc.image
            ));
        }
        if self.state.holds(&source) {
            let s = self
                .find_svc(Some(&source), &p.service)
                .map_err(|e| e.to_string())?;
            let healthy = lock(&s.live)
                .iter()
                .any(|l| l.release == row.number && l.healthy && l.exited.is_none());
            if !healthy {
                return Err(format!(
                    "release {} of {what} has no healthy instance: promote a release that serves",
                    row.number
                ));
            }
        }
        Ok(row.digest)
    }
}
