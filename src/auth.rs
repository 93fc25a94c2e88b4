//! Auth: who may read which rows. Verifies a JWT (HS256 with a shared
//! secret, RS256/ES256 with a public key), taken from `Authorization:
//! Bearer`, `?access_token=` or a cookie, and turns each feed's rules into
//! a filter the client cannot widen.
//!
//! Off unless configured. Never logs or echoes a token.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// The `[auth]` table of the configuration file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// HS256 shared secret (`ROWCAST_JWT_SECRET` wins).
    pub secret: Option<String>,
    /// PEM public key file for RS256 or ES256.
    pub public_key_file: Option<std::path::PathBuf>,
    /// `HS256`, `RS256` or `ES256` [default: HS256 with a secret, RS256 with a key].
    pub algorithm: Option<String>,
    /// Required `iss` claim.
    pub issuer: Option<String>,
    /// Required `aud` claim.
    pub audience: Option<String>,
    /// Clock leeway for `exp` and `nbf`.
    #[serde(default, with = "humantime_serde")]
    pub leeway: Option<Duration>,
    /// Cookie that may carry the token.
    pub cookie: Option<String>,
}

/// Why auth could not be set up; names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("auth: give `secret` (or ROWCAST_JWT_SECRET) or `public_key_file`")]
    NoKey,
    #[error("auth: `algorithm` `{0}` is not supported; valid: HS256, RS256, ES256")]
    Algorithm(String),
    #[error("auth: `public_key_file` {path}: {problem}")]
    Key { path: String, problem: String },
    #[error("auth: `secret` is for HS256 and `public_key_file` for RS256/ES256; `algorithm` {0} does not match")]
    Mismatch(String),
}

/// A verifier of tokens.
#[derive(Clone)]
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
    /// Cookie that may carry the token.
    pub cookie: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Auth")
            .field("algorithms", &self.validation.algorithms)
            .finish()
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a token is required: send `Authorization: Bearer <token>`, `?access_token=` or the `{0}` cookie")]
    Missing(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the token has no `sub` claim: this server limits open streams per subject, so every token needs one")]
    NoSubject,
    #[error("{0}")]
    Forbidden(String),
}

impl Refusal {
    /// 401 for a missing or bad token, 403 for a good token without access.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Refusal::Forbidden(_))
    }
}

/// A verified token's claims.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims(pub serde_json::Map<String, Value>);

impl Claims {
    /// When the token expires, if it says.
    pub fn expires_in(&self) -> Option<Duration> {
        let exp = self.0.get("exp")?.as_u64()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        Some(Duration::from_secs(exp.saturating_sub(now)))
    }

    /// A claim's values as text: a list gives each element, a scalar one.
    fn values(&self, claim: &str) -> Option<Vec<String>> {
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        match self.0.get(claim)? {
            Value::Array(items) => Some(items.iter().filter_map(text).collect()),
            other => text(other).map(|v| vec![v]),
        }
    }
}

impl Auth {
    /// The verifier the configuration asks for, or `None` when auth is off.
    pub fn from_config(
        file: &AuthFile,
        env_secret: Option<String>,
    ) -> Result<Option<Auth>, ConfigError> {
        let secret = env_secret
            .or_else(|| file.secret.clone())
            .filter(|s| !s.is_empty());
        if secret.is_none() && file.public_key_file.is_none() {
            return if file.algorithm.is_some() || file.issuer.is_some() || file.audience.is_some() {
                Err(ConfigError::NoKey)
            } else {
                Ok(None)
            };
        }
        let algorithm = match file.algorithm.as_deref() {
            None if secret.is_some() => Algorithm::HS256,
            None => Algorithm::RS256,
            Some("HS256") => Algorithm::HS256,
            Some("RS256") => Algorithm::RS256,
            Some("ES256") => Algorithm::ES256,
            Some(other) => return Err(ConfigError::Algorithm(other.to_owned())),
        };
        let key = match (algorithm, &secret, &file.public_key_file) {
            (Algorithm::HS256, Some(secret), _) => DecodingKey::from_secret(secret.as_bytes()),
            (Algorithm::RS256 | Algorithm::ES256, _, Some(path)) => {
                let problem = |p: String| ConfigError::Key {
                    path: path.display().to_string(),
                    problem: p,
                };
                let pem = std::fs::read(path).map_err(|e| problem(e.to_string()))?;
                let key = if algorithm == Algorithm::RS256 {
                    DecodingKey::from_rsa_pem(&pem)
                } else {
                    DecodingKey::from_ec_pem(&pem)
                };
                key.map_err(|e| problem(e.to_string()))?
            }
            _ => return Err(ConfigError::Mismatch(format!("{algorithm:?}"))),
        };
        // Only the configured algorithm: a token saying `none` or another
        // algorithm is refused.
        let mut validation = Validation::new(algorithm);
        validation.leeway = file.leeway.unwrap_or(Duration::from_secs(30)).as_secs();
        validation.validate_nbf = true;
        // A configured issuer or audience is required, not only compared
        // when present: a token without the claim would pass otherwise.
        validation.required_spec_claims.clear();
        if let Some(issuer) = &file.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        match &file.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        Ok(Some(Auth {
            key,
            validation,
            cookie: file
                .cookie
                .clone()
                .unwrap_or_else(|| "rowcast_token".to_owned()),
        }))
    }

    /// Verifies a token.
    pub fn verify(&self, token: Option<&str>) -> Result<Claims, Refusal> {
        let token = token.ok_or_else(|| Refusal::Missing(self.cookie.clone()))?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => Refusal::Expired,
            kind => Refusal::Invalid(reason(kind)),
        })?;
        // `sub` is a StringOrURI (RFC 7519). Another kind is refused, not
        // guessed at: the per-subject stream limit counts by it, and a
        // numeric one would escape it.
        if data.claims.get("sub").is_some_and(|sub| !sub.is_string()) {
            return Err(Refusal::Invalid(
                "the `sub` claim is not a string".to_owned(),
            ));
        }
        Ok(Claims(data.claims))
    }
}

/// A short reason that never contains the token.
fn reason(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind::*;
    let fixed = match kind {
        // Claim names come from the validation this module set up, never
        // from the token.
        MissingRequiredClaim(claim) => {
            return format!("missing or malformed `{claim}` claim, which this server requires")
        }
        InvalidClaimFormat(claim) => return format!("the `{claim}` claim is malformed"),
        InvalidSignature => "bad signature",
        InvalidAlgorithm | InvalidAlgorithmName => "algorithm not accepted",
        ImmatureSignature => "not valid yet (nbf)",
        InvalidAudience => "wrong audience",
        InvalidIssuer => "wrong issuer",
        InvalidToken | Base64(_) | Json(_) | Utf8(_) => "malformed",
        _ => "rejected",
    };
    fixed.to_owned()
}

/// A feed's access rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    /// Claims that must hold exactly these values to read the feed.
    pub require: BTreeMap<String, Value>,
    /// Filter column → claim whose values bound it.
    pub filters: BTreeMap<String, String>,
}

impl Rules {
    /// Whether `claims` may read the feed at all.
    pub fn check(&self, claims: &Claims) -> Result<(), Refusal> {
        for (claim, expected) in &self.require {
            if claims.0.get(claim) != Some(expected) {
                return Err(Refusal::Forbidden(format!(
                    "this feed needs the claim `{claim}` = {expected}"
                )));
            }
        }
        Ok(())
    }

    /// The values the token allows for `column`, when a rule bounds it.
    /// The client may ask for a subset; asking for more is refused.
    pub fn allowed(&self, column: &str, claims: &Claims) -> Option<Result<Vec<String>, Refusal>> {
        let claim = self.filters.get(column)?;
        Some(claims.values(claim).ok_or_else(|| {
            Refusal::Forbidden(format!(
                "the token has no `{claim}` claim, which `{column}` needs"
            ))
        }))
    }
}
