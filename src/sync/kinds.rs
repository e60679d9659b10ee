//! How each kind resolves and fetches: the only part of the pipeline that differs.

use std::time::Duration;

use jiff::Timestamp;

use super::SyncedResource;
use super::schedule::{LeaseAction, lease_action};
use crate::api::{SecretTarget, SyncPolicy, SyncStatus, VaultSecret};
use crate::backend::vault::Resolved;
use crate::backend::{Fetched, Lease, Replaced};
use crate::controller::Context;
use crate::error::{Error, Result};
use crate::events::EventType;

/// Finalizer of VaultSecrets with a database source: the lease is revoked before the
/// resource goes.
pub const REVOKE_FINALIZER: &str = "vaultsync.dev/revoke-lease";

impl SyncedResource for VaultSecret {
    const KIND: &'static str = "VaultSecret";

    fn target(&self) -> SecretTarget {
        let mut target = self
            .spec
            .output
            .as_ref()
            .and_then(|o| o.secret.clone())
            .unwrap_or_default();
        if self.spec.vault.pki.is_some() && target.type_.is_none() {
            target.type_ = Some("kubernetes.io/tls".into());
        }
        target
    }

    fn policy(&self) -> &SyncPolicy {
        &self.spec.policy
    }

    fn status(&self) -> Option<&SyncStatus> {
        self.status.as_ref()
    }

    fn renewal_percent(&self) -> u8 {
        self.spec
            .renewal_percent
            .and_then(|p| u8::try_from(p).ok())
            .unwrap_or(67)
            .clamp(1, 90)
    }

    fn is_dynamic(&self) -> bool {
        self.spec.vault.database.is_some() || self.spec.vault.pki.is_some()
    }

    async fn fetch(&self, ctx: &Context, copy_present: bool) -> Result<Fetched> {
        let namespace = self.metadata.namespace.as_deref().unwrap_or_default();
        let source = &self.spec.vault;
        let resolved = ctx.vault.resolve(namespace, source)?;
        let client = ctx.vault.login(&ctx.client, &resolved).await?;
        let result = if let Some(kv) = &source.kv {
            ctx.vault.fetch_kv(&client, &resolved, kv).await
        } else {
            self.fetch_dynamic(ctx, &client, &resolved, copy_present)
                .await
        };
        if let Err(Error::AuthFailed(_)) = &result {
            // The cached token may have been revoked: log in afresh next time.
            ctx.vault.forget(&resolved);
        }
        result
    }

    async fn after_write(&self, ctx: &Context, fetched: &Fetched) {
        let Some(replaced) = &fetched.replaces else {
            return;
        };
        let namespace = self.metadata.namespace.as_deref().unwrap_or_default();
        let result = async {
            let resolved = ctx.vault.resolve(namespace, &self.spec.vault)?;
            let client = ctx.vault.login(&ctx.client, &resolved).await?;
            ctx.vault.revoke(&client, &resolved, replaced).await
        }
        .await;
        if let Err(e) = result {
            // The old material ends with its lease anyway; say so and go on.
            ctx.publish(
                self,
                EventType::Warning,
                "RevokeFailed",
                format!(
                    "could not revoke the replaced credentials, which expire on their own: {e}"
                ),
            )
            .await;
        }
    }

    fn finalizer(&self) -> Option<&'static str> {
        self.spec.vault.database.as_ref().map(|_| REVOKE_FINALIZER)
    }

    async fn cleanup(&self, ctx: &Context) -> Result<()> {
        let fresh = self.fresh_status(ctx).await?;
        let Some(lease) = fresh.as_ref().and_then(|s| s.lease.as_ref()) else {
            return Ok(());
        };
        let (Some(id), expires_at) = (lease.id.clone(), lease.expires_at.as_ref().map(|t| t.0))
        else {
            return Ok(());
        };
        if expires_at.is_some_and(|end| end <= Timestamp::now()) {
            // Expired leases are already gone in Vault: nothing left to revoke.
            return Ok(());
        }
        let namespace = self.metadata.namespace.as_deref().unwrap_or_default();
        let resolved = ctx.vault.resolve(namespace, &self.spec.vault)?;
        let client = ctx.vault.login(&ctx.client, &resolved).await?;
        ctx.vault
            .revoke(&client, &resolved, &Replaced::Lease(id))
            .await
            .map_err(|e| {
                Error::unavailable(format!(
                    "revoking the lease before deletion failed (retrying until it expires): {e}"
                ))
            })
    }
}

impl VaultSecret {
    /// Database credentials and PKI certificates: keep, renew or re-issue, from the lease
    /// recorded in status, so a restarted operator carries on without issuing anything.
    async fn fetch_dynamic(
        &self,
        ctx: &Context,
        client: &vaultrs::client::VaultClient,
        resolved: &Resolved,
        copy_present: bool,
    ) -> Result<Fetched> {
        // The lease is read from the apiserver, not the watch cache: a reconcile triggered
        // by the Secret just written must see the status written right after it, or it
        // would issue a second set of credentials.
        let fresh = self.fresh_status(ctx).await?;
        let status = fresh.as_ref();
        let recorded = status.and_then(|s| s.lease.as_ref());
        let current = recorded.and_then(|l| {
            Some(Lease {
                id: l.id.clone()?,
                duration: Duration::from_secs(u64::try_from(l.duration_seconds?).ok()?),
                renewable: l.renewable.unwrap_or(false),
                expires_at: l.expires_at.as_ref()?.0,
            })
        });
        let now = Timestamp::now();
        let action = lease_action(
            now,
            current
                .as_ref()
                .map(|l| (l.expires_at, l.duration, l.renewable)),
            self.renewal_percent(),
            copy_present,
        );
        let kept = |lease: Lease| Fetched {
            version: status
                .and_then(|s| s.source_version.clone())
                .unwrap_or_default(),
            not_after: Some(lease.expires_at),
            lease: Some(lease),
            keep_existing: true,
            ..Fetched::default()
        };
        let source = &self.spec.vault;
        let replaced = |lease: &Lease| match &source.pki {
            Some(pki) if pki.revoke_on_rotate == Some(true) => Some(Replaced::Certificate {
                mount: pki.mount.clone(),
                serial: lease.id.clone(),
            }),
            Some(_) => None,
            None => Some(Replaced::Lease(lease.id.clone())),
        };
        match (action, current) {
            (LeaseAction::Keep, Some(lease)) => Ok(kept(lease)),
            (LeaseAction::Renew, Some(lease)) => {
                match ctx
                    .vault
                    .renew_lease(client, resolved, &lease.id, lease.duration)
                    .await
                {
                    // Granted in full: the same credentials carry on.
                    Ok(renewed) if renewed.duration + Duration::from_secs(1) >= lease.duration => {
                        return Ok(kept(renewed));
                    }
                    // Shorter than asked (max TTL near) or refused: issue new credentials
                    // while the old ones still work, and revoke those afterwards.
                    Ok(_) | Err(_) => {}
                }
                let mut fresh = self.reissue(ctx, resolved, &lease).await?;
                fresh.replaces = replaced(&lease);
                Ok(fresh)
            }
            (_, Some(previous)) => {
                let mut fresh = self.reissue(ctx, resolved, &previous).await?;
                fresh.replaces = replaced(&previous);
                Ok(fresh)
            }
            (_, None) => self.issue(ctx, client, resolved).await,
        }
    }

    /// The status as the apiserver has it now, not as the watch cache last saw it.
    async fn fresh_status(&self, ctx: &Context) -> Result<Option<SyncStatus>> {
        let api: kube::Api<VaultSecret> = kube::Api::namespaced(
            ctx.client.clone(),
            self.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let fresh = api
            .get_status(self.metadata.name.as_deref().unwrap_or_default())
            .await?;
        Ok(fresh.status)
    }

    /// A re-issue of database credentials logs in afresh first when the cached token would
    /// end before a lease as long as the previous one: leases die with their token.
    async fn reissue(
        &self,
        ctx: &Context,
        resolved: &Resolved,
        previous: &Lease,
    ) -> Result<Fetched> {
        let token_end = ctx.vault.token_expiry(resolved).await;
        let now = Timestamp::now();
        let too_short = token_end.is_some_and(|end| {
            end <= now
                .saturating_add(
                    jiff::SignedDuration::try_from(previous.duration).unwrap_or_default(),
                )
                .unwrap_or(now)
        });
        if self.spec.vault.database.is_some() && too_short {
            ctx.vault.forget(resolved);
        }
        let client = ctx.vault.login(&ctx.client, resolved).await?;
        self.issue(ctx, &client, resolved).await
    }

    async fn issue(
        &self,
        ctx: &Context,
        client: &vaultrs::client::VaultClient,
        resolved: &Resolved,
    ) -> Result<Fetched> {
        match (&self.spec.vault.database, &self.spec.vault.pki) {
            (Some(db), _) => {
                let mut fetched = ctx.vault.issue_database(client, resolved, db).await?;
                // Vault revokes a lease when the token that created it ends. A lease that
                // would outlive its token is recorded as ending with the token, and as not
                // renewable, so it is re-issued under a fresh login before that.
                if let (Some(lease), Some(token_end)) = (
                    fetched.lease.as_mut(),
                    ctx.vault.token_expiry(resolved).await,
                ) && token_end < lease.expires_at
                {
                    let now = Timestamp::now();
                    lease.expires_at = token_end;
                    lease.duration =
                        Duration::try_from(token_end.duration_since(now)).unwrap_or_default();
                    lease.renewable = false;
                    fetched.not_after = Some(token_end);
                }
                Ok(fetched)
            }
            (_, Some(pki)) => ctx.vault.issue_certificate(client, resolved, pki).await,
            _ => Err(Error::InvalidSpec(
                "set exactly one source: kv, database or pki".into(),
            )),
        }
    }
}
