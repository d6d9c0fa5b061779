//! `ferry run`'s configuration: plain data, loaded from TOML, every key overridable by a
//! flag and a `FERRY_…` environment variable (the flags are declared with `env`, so clap
//! applies both; flags override the file).
//!
//! ```toml
//! state_dir = "/var/lib/ferry"
//! admin_addr = "127.0.0.1:9731"
//!
//! [target]
//! url = "postgresql://ferry@db.internal/connect?sslmode=verify-full"
//! password_file = "/etc/ferry/pg-password"
//!
//! [[source]]
//! name = "connect"
//! path = "/var/lib/rstudio-connect/db/connect.db"
//! schema = "connect"
//!
//! [[source]]
//! name = "instrumentation"
//! path = "/var/lib/rstudio-connect/db/instrumentation.db"
//! schema = "instrumentation"
//! exclude = ["sqlite_stat1"]
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Default admin address: loopback, on a port no well-known exporter uses (9187 is
/// postgres_exporter's, which runs on exactly the hosts ferry runs on).
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9731";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub state_dir: Option<PathBuf>,
    pub admin_addr: Option<String>,
    #[serde(default)]
    pub target: TargetConfig,
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    pub archive: Option<ArchiveConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// libpq URL or key=value string; libpq environment variables and ~/.pgpass apply.
    pub url: Option<String>,
    /// A file whose first line is the password (so none has to be in the config).
    pub password_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Source id; defaults to the database file's stem.
    pub name: Option<String>,
    pub path: PathBuf,
    #[serde(default = "default_kind")]
    pub kind: String,
    #[serde(default = "default_schema")]
    pub schema: String,
    #[serde(default)]
    pub table_prefix: String,
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// The `[archive]` section: base backups and sealed log segments for point-in-time restore
/// (proto/archive.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    pub dir: PathBuf,
    /// e.g. "6h"
    pub base_interval: Option<String>,
    /// e.g. "7d"
    pub retention: Option<String>,
    pub keep_bases: Option<u32>,
    /// Seal the log's open segment once it is this old (and holds records), so a quiet
    /// source's last changes reach the archive, e.g. "60s" (the default).
    pub seal_after: Option<String>,
}

impl ArchiveConfig {
    pub fn options(&self) -> Result<ferry_archive::ArchiveOptions, ConfigError> {
        let duration =
            |field: &str, v: &Option<String>| -> Result<Option<std::time::Duration>, ConfigError> {
                v.as_deref()
                    .map(|t| {
                        humantime::parse_duration(t).map_err(|e| ConfigError::Invalid {
                            field: format!("archive.{field}"),
                            problem: format!("{t:?} is not a duration like \"6h\" or \"7d\" ({e})"),
                        })
                    })
                    .transpose()
            };
        self.seal_after()?;
        let mut o = ferry_archive::ArchiveOptions::new(self.dir.clone());
        o.base_interval = duration("base_interval", &self.base_interval)?;
        o.keep_for = duration("retention", &self.retention)?;
        if let Some(k) = self.keep_bases {
            if k == 0 {
                return Err(ConfigError::Invalid {
                    field: "archive.keep_bases".into(),
                    problem: "must be at least 1 (a restore needs a base)".into(),
                });
            }
            o.keep_bases = k as usize;
        }
        Ok(o)
    }
}

impl ArchiveConfig {
    /// `seal_after`, when set.
    pub fn seal_after(&self) -> Result<Option<std::time::Duration>, ConfigError> {
        let Some(t) = self.seal_after.as_deref() else {
            return Ok(None);
        };
        let d = humantime::parse_duration(t).map_err(|e| ConfigError::Invalid {
            field: "archive.seal_after".into(),
            problem: format!("{t:?} is not a duration like \"60s\" ({e})"),
        })?;
        if d.is_zero() {
            return Err(ConfigError::Invalid {
                field: "archive.seal_after".into(),
                problem: "must be more than 0 (every round would seal a segment)".into(),
            });
        }
        Ok(Some(d))
    }
}

fn default_kind() -> String {
    "sqlite".into()
}
fn default_schema() -> String {
    "public".into()
}
fn default_mode() -> String {
    "create".into()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            source: Box::new(e),
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Checks what serde cannot, naming the field path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, problem: &str| {
            Err(ConfigError::Invalid {
                field,
                problem: problem.into(),
            })
        };
        if let Some(a) = &self.archive {
            a.options()?;
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let f = |k: &str| format!("source[{i}].{k}");
            if !matches!(s.kind.as_str(), "sqlite" | "sled") {
                return invalid(f("kind"), "must be \"sqlite\" or \"sled\"");
            }
            if !matches!(s.mode.as_str(), "create" | "existing") {
                return invalid(f("mode"), "must be \"create\" or \"existing\"");
            }
            if s.schema.is_empty() {
                return invalid(f("schema"), "must not be empty");
            }
            let name = self.source_name(i);
            if !names.insert(name.clone()) {
                return invalid(
                    f("name"),
                    &format!("two sources are named {name:?}; give each a distinct `name`"),
                );
            }
        }
        if let Some(addr) = &self.admin_addr
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            return invalid(
                "admin_addr".into(),
                "must be an address like 127.0.0.1:9731",
            );
        }
        Ok(())
    }

    /// The id of source `i`: its name, or its file's stem.
    pub fn source_name(&self, i: usize) -> String {
        let s = &self.sources[i];
        match &s.name {
            Some(n) => ferry_core::state_dir::sanitize_source_id(n),
            None => ferry_core::state_dir::source_id_from_path(&s.path).0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_loads() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| {
                l.strip_prefix("//! ")
                    .or_else(|| l.strip_prefix("//!"))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse(&example, Path::new("example")).unwrap();
        assert_eq!(c.sources.len(), 2);
        assert_eq!(c.source_name(0), "connect");
        assert_eq!(c.sources[1].exclude, vec!["sqlite_stat1".to_string()]);
        assert_eq!(c.admin_addr.as_deref(), Some(DEFAULT_ADMIN_ADDR));
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::parse(
            "[[source]]\npath = \"a.db\"\nmode = \"replace\"\n",
            Path::new("x"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "source[0].mode: must be \"create\" or \"existing\""
        );
        let e = Config::parse(
            "[[source]]\npath = \"/a/x.db\"\n[[source]]\npath = \"/b/x.db\"\n",
            Path::new("x"),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("source[1].name: two sources are named \"x\""),
            "{e}"
        );
        let e = Config::parse("sate_dir = \"/tmp\"\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("unknown field `sate_dir`"), "{e}");
    }
}
