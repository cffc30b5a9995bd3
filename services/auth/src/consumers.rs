//! What auth does with other services' events: users' `SessionsRevoked` (a password or role
//! change) ends that user's sessions.

use std::sync::Arc;

use prost::Message as _;
use shopmesh_events::Event;
use shopmesh_kit::Error;
use shopmesh_kit::clock::now_ms;
use shopmesh_proto::shopmesh::events::v1::{UserEvent, user_event};
use uuid::Uuid;

use crate::store::AuthStore;

/// The subscription on which auth learns that sessions must end.
pub const SESSIONS_SUBSCRIPTION: &str = "auth-sessions";

/// Revokes a user's sessions on `SessionsRevoked`. Revoking twice changes nothing, so a
/// redelivered event needs no inbox.
pub async fn end_sessions(store: Arc<dyn AuthStore>, event: Event) -> shopmesh_kit::Result<()> {
    let event = UserEvent::decode(event.payload.as_slice())
        .map_err(|e| Error::internal("undecodable user event", e))?;
    if let Some(user_event::Payload::SessionsRevoked(revoked)) = event.payload {
        let user = Uuid::parse_str(&event.user_id)
            .map_err(|e| Error::internal("user event with a bad user id", e))?;
        let count = store.revoke_user(user, now_ms()).await?;
        tracing::info!(user_id = %user, reason = revoked.reason, revoked = count, "sessions ended");
    }
    Ok(())
}
