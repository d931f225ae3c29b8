//! `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…` connection strings.

use onramp_model::Secret;

/// Why a connection string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    #[error("connection string part '{part}' has no '='; expected Name=value")]
    PartWithoutEquals { part: String },
    #[error("the connection string has no HostName=")]
    NoHostName,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionString {
    pub host_name: String,
    pub shared_access_key_name: Option<String>,
    pub shared_access_key: Option<Secret>,
    pub device_id: Option<String>,
}

impl ConnectionString {
    /// Parses by name, in any order; keys are case-insensitive, values are
    /// kept verbatim (base64 keys end in `=`, so only the first `=` splits).
    pub fn parse(text: &str) -> Result<Self, ConnectionStringError> {
        let mut host_name = None;
        let mut key_name = None;
        let mut key = None;
        let mut device_id = None;
        for part in text.trim().split(';').filter(|p| !p.trim().is_empty()) {
            let (name, value) =
                part.split_once('=')
                    .ok_or_else(|| ConnectionStringError::PartWithoutEquals {
                        part: part.to_owned(),
                    })?;
            let value = value.trim().to_owned();
            match name.trim().to_ascii_lowercase().as_str() {
                "hostname" => host_name = Some(value),
                "sharedaccesskeyname" => key_name = Some(value),
                "sharedaccesskey" => key = Some(Secret::new(value)),
                "deviceid" => device_id = Some(value),
                _ => {}
            }
        }
        let host_name = host_name
            .filter(|h| !h.is_empty())
            .ok_or(ConnectionStringError::NoHostName)?;
        Ok(Self {
            host_name,
            shared_access_key_name: key_name,
            shared_access_key: key,
            device_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_in_any_order() {
        let c = ConnectionString::parse(
            "SharedAccessKey=abc==;hostname=dps.example.net;SharedAccessKeyName=owner",
        )
        .unwrap();
        assert_eq!(c.host_name, "dps.example.net");
        assert_eq!(c.shared_access_key_name.as_deref(), Some("owner"));
        assert_eq!(c.shared_access_key.unwrap().expose(), "abc==");
        assert!(ConnectionString::parse("SharedAccessKey=x").is_err());
        assert!(ConnectionString::parse("HostName").is_err());
    }
}
