//! Dynamic database credentials and their leases: issue, renew, re-issue and revoke.
//!
//! The token policy lives here too. Vault revokes every lease when the token that
//! created it ends, so a lease never outlives its token: a lease that would is recorded
//! as ending with the token and not renewable, and is re-issued under a fresh login.
//!
//! Status is not trusted blindly: only lease ids under the resource's own
//! `{mount}/creds/{role}/` prefix are renewed or revoked, and a lease's end is only ever
//! what Vault answered.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::request::{Call, path};
use super::{VaultBackend, VaultRequest, json_bytes};
use crate::api::DatabaseSource;
use crate::backend::{Fresh, Lease, Material, Prior, SecretValue};
use crate::error::{Error, Result};
use crate::sync::schedule::{LeaseAction, lease_action};

/// The prefix of every lease id that `db` issues.
pub(super) fn lease_prefix(db: &DatabaseSource) -> String {
    format!("{}/creds/{}/", db.mount.trim_matches('/'), db.role)
}

/// Whether `id` is a well-formed Vault lease id of some database role: only these are
/// revoked when a resource's source is no longer that role (after a spec change).
pub(super) fn is_credentials_lease(id: &str) -> bool {
    id.contains("/creds/")
        && id
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
}

impl VaultBackend {
    /// Keep, renew or re-issue the credentials of a database source.
    pub(super) async fn fetch_database(
        &self,
        request: &VaultRequest,
        db: &DatabaseSource,
        prior: Prior<'_>,
    ) -> Result<Material> {
        // A lease of another role (a stale or forged status) is neither renewed nor kept.
        let current = prior
            .lease
            .filter(|l| l.id.starts_with(&lease_prefix(db)) && is_credentials_lease(&l.id));
        let now = Timestamp::now();
        match lease_action(now, current, prior.renewal_percent, prior.copy_intact) {
            LeaseAction::Keep => {
                let lease = current
                    .cloned()
                    .ok_or_else(|| Error::unavailable("no lease"))?;
                Ok(Material::Unchanged { lease })
            }
            LeaseAction::Renew => {
                let lease = current.ok_or_else(|| Error::unavailable("no lease"))?;
                let token = self.login(request).await?;
                match self.renew(request, &token, lease).await {
                    // Granted in full: the same credentials carry on.
                    Ok(renewed) if renewed.duration + Duration::from_secs(1) >= lease.duration => {
                        Ok(Material::Unchanged {
                            lease: self.capped_by_token(request, renewed).await,
                        })
                    }
                    // Shorter than asked (max TTL near) or refused: issue new credentials
                    // while the old ones still work; the pipeline revokes those afterwards.
                    Ok(_) | Err(_) => self.reissue(request, db, lease).await,
                }
            }
            LeaseAction::Reissue => match current {
                Some(lease) => self.reissue(request, db, lease).await,
                None => self.issue(request, db).await,
            },
            LeaseAction::Issue => self.issue(request, db).await,
        }
    }

    /// A re-issue logs in afresh first when the cached token would end before a lease as
    /// long as the previous one.
    async fn reissue(
        &self,
        request: &VaultRequest,
        db: &DatabaseSource,
        previous: &Lease,
    ) -> Result<Material> {
        let now = Timestamp::now();
        let needed = now
            .saturating_add(SignedDuration::try_from(previous.duration).unwrap_or_default())
            .unwrap_or(now);
        if self
            .token_expiry(request)
            .await
            .is_some_and(|end| end <= needed)
        {
            self.forget(request);
        }
        self.issue(request, db).await
    }

    /// Issues credentials: `{mount}/creds/{role}`, with their lease.
    async fn issue(&self, request: &VaultRequest, db: &DatabaseSource) -> Result<Material> {
        let token = self.login(request).await?;
        let what = format!("{}/creds/{}", db.mount, db.role);
        let body = self
            .call(
                request,
                Call {
                    method: reqwest::Method::GET,
                    path: &path(&[db.mount.as_str(), "creds", db.role.as_str()])?,
                    body: None,
                    token: Some(&token),
                    operation: "database_creds",
                    what: &what,
                },
            )
            .await?;
        let lease = lease_from(&body, &what)?;
        let data = body["data"]
            .as_object()
            .ok_or_else(|| Error::unavailable(format!("Vault returned no credentials for {what}")))?
            .iter()
            .map(|(k, v)| (k.clone(), SecretValue::new(json_bytes(v))))
            .collect();
        let lease = self.capped_by_token(request, lease).await;
        Ok(Material::Fresh(Fresh {
            data,
            version: short_id(&lease.id),
            not_after: Some(lease.expires_at),
            lease: Some(lease),
        }))
    }

    /// A lease that would outlive the token that created it is recorded as ending with
    /// the token, and as not renewable, so it is re-issued under a fresh login first.
    async fn capped_by_token(&self, request: &VaultRequest, mut lease: Lease) -> Lease {
        if let Some(token_end) = self.token_expiry(request).await
            && token_end < lease.expires_at
        {
            let now = Timestamp::now();
            lease.expires_at = token_end;
            lease.duration = Duration::try_from(token_end.duration_since(now)).unwrap_or_default();
            lease.renewable = false;
        }
        lease
    }

    /// Renews a lease for another period as long as the last; returns the lease as Vault
    /// granted it.
    async fn renew(&self, request: &VaultRequest, token: &str, lease: &Lease) -> Result<Lease> {
        let body = self
            .call(
                request,
                Call {
                    method: reqwest::Method::PUT,
                    path: &format!("sys/leases/renew/{}", path(&[lease.id.as_str()])?),
                    body: Some(json!({"increment": lease.duration.as_secs()})),
                    token: Some(token),
                    operation: "lease_renew",
                    what: "the lease renewal",
                },
            )
            .await?;
        let renewed = lease_from(&body, "the lease renewal")?;
        if renewed.id != lease.id {
            return Err(Error::unavailable(
                "Vault renewed a different lease than the one asked for",
            ));
        }
        Ok(renewed)
    }

    /// Revokes a credentials lease: `sys/leases/revoke/<id>`, so a tenant policy can be
    /// scoped to its own leases' paths. A lease Vault no longer knows is already gone.
    pub(super) async fn revoke_lease(&self, request: &VaultRequest, id: &str) -> Result<()> {
        let token = self.login(request).await?;
        let result = self
            .call(
                request,
                Call {
                    method: reqwest::Method::PUT,
                    path: &format!("sys/leases/revoke/{}", path(&[id])?),
                    body: Some(json!({})),
                    token: Some(&token),
                    operation: "revoke",
                    what: "the lease revocation",
                },
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(Error::InvalidSpec(words))
                if words.contains("lease not found") || words.contains("invalid lease") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// The last segment of a lease id, as the source version.
fn short_id(lease_id: &str) -> String {
    lease_id.rsplit('/').next().unwrap_or(lease_id).to_string()
}

fn lease_from(body: &Value, what: &str) -> Result<Lease> {
    let id = body["lease_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            Error::InvalidSpec(format!(
                "{what} returned no lease: is this a dynamic secrets engine?"
            ))
        })?;
    let seconds = body["lease_duration"].as_u64().unwrap_or(0);
    let now = Timestamp::now();
    Ok(Lease {
        id: id.to_string(),
        duration: Duration::from_secs(seconds),
        renewable: body["renewable"].as_bool().unwrap_or(false),
        expires_at: now
            .saturating_add(SignedDuration::from_secs(seconds as i64))
            .unwrap_or(now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_credentials_lease_ids_are_accepted() {
        assert!(is_credentials_lease("database/creds/app/AbC123"));
        for bad in [
            "database/creds/../x",
            "sys/policy/x",
            "database/creds/app/a?b",
            "database//creds/x",
        ] {
            assert!(!is_credentials_lease(bad), "{bad}");
        }
        let db = DatabaseSource {
            mount: "database".into(),
            role: "app".into(),
        };
        assert!("database/creds/app/X".starts_with(&lease_prefix(&db)));
        assert!(!"database/creds/app-other/X".starts_with(&lease_prefix(&db)));
    }
}
