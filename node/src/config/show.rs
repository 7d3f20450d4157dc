//! `together-node config`: the resolved configuration as a TOML file in
//! the shape `--config` reads, with secrets hidden, so an operator sees
//! what a `run` with the same flags and environment would use.

use super::Config;

/// What replaces a secret in the output.
const HIDDEN: &str = "<hidden>";

impl Config {
    /// The configuration as TOML (every key, defaults included).
    pub fn to_toml(&self) -> String {
        let mut table = toml::Table::new();
        let mut put = |key: &str, value: toml::Value| {
            table.insert(key.to_string(), value);
        };
        put("listen", self.listen.to_string().into());
        put("data_dir", self.data_dir.display().to_string().into());
        if let Some(url) = &self.database_url {
            put("database_url", hide_password(url).into());
        }
        put("database_max_connections", i64::from(self.database_max_connections).into());
        put("log_format", format!("{:?}", self.log_format).to_lowercase().into());
        put("max_upload_bytes", clamp(self.max_upload_bytes).into());
        if let Some(dir) = &self.web_dir {
            put("web_dir", dir.display().to_string().into());
        }
        put("rate_limit_per_minute", i64::from(self.rate_limit_per_minute).into());
        put("registration", format!("{:?}", self.registration).to_lowercase().into());
        if self.metrics_token.is_some() {
            put("metrics_token", HIDDEN.into());
        }
        let listen: Vec<String> = if self.p2p_listen.is_empty() {
            crate::net::DEFAULT_LISTEN.iter().map(|a| a.to_string()).collect()
        } else {
            self.p2p_listen.clone()
        };
        put("p2p_listen", strings(&listen));
        put("peers", strings(&self.peers));
        put("voice_relay", self.voice_relay.to_string().into());
        if let Some(public) = self.voice_relay_public {
            put("voice_relay_public", public.to_string().into());
        }
        let mut voice = toml::Value::try_from(&self.voice).unwrap_or_else(|_| toml::Table::new().into());
        if let Some(servers) = voice.get_mut("ice_servers").and_then(toml::Value::as_array_mut) {
            for server in servers.iter_mut().filter_map(toml::Value::as_table_mut) {
                for secret in ["credential", "rest_secret"] {
                    if let Some(value) = server.get_mut(secret) {
                        *value = HIDDEN.into();
                    }
                }
            }
        }
        put("voice", voice);
        toml::to_string(&table).unwrap_or_default()
    }
}

fn strings(values: &[String]) -> toml::Value {
    toml::Value::Array(values.iter().map(|v| v.clone().into()).collect())
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `postgres://user:secret@host/db` → `postgres://user:<hidden>@host/db`.
fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:{HIDDEN}@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::hide_password;

    #[test]
    fn passwords_in_database_urls_are_hidden() {
        assert_eq!(hide_password("postgres://u:p%40ss@db:5432/t"), "postgres://u:<hidden>@db:5432/t");
        assert_eq!(hide_password("postgres://u@db/t"), "postgres://u@db/t");
        assert_eq!(hide_password("postgres:///t?host=/run"), "postgres:///t?host=/run");
    }
}
