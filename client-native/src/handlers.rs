//! Handlers for requests the server sends (`req` from server to client).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sockeye_core::codec::Payload;
use sockeye_core::ErrorCode;

use crate::Error;

/// A type-erased handler: raw `d` in, raw `d` or an error out.
pub(crate) type Handler = Arc<
    dyn Fn(Option<Payload>) -> BoxFuture<'static, Result<Option<Payload>, Error>> + Send + Sync,
>;

/// The registry the driver consults for every server `req`; shared with every [`crate::Client`] clone so
/// handlers can be added at any time.
#[derive(Default)]
pub(crate) struct Handlers(RwLock<HashMap<String, Handler>>);

impl Handlers {
    pub fn insert(&self, method: String, handler: Handler) {
        // A poisoned lock only means another thread panicked while inserting; the map itself is intact.
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(method, handler);
    }

    /// Drops every handler. A handler may hold a [`crate::Client`] (which holds this registry): clearing it when
    /// the client ends breaks that cycle.
    pub fn clear(&self) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    pub fn get(&self, method: &str) -> Option<Handler> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(method)
            .cloned()
    }
}

/// Decodes an optional payload as `T`; an absent `d` reads as CBOR `null`, so `()` and `Option<_>` work.
pub(crate) fn decode_optional<T: DeserializeOwned>(data: Option<&Payload>) -> Result<T, Error> {
    Ok(match data {
        Some(payload) => payload.decode::<T>()?,
        None => Payload::null().decode::<T>()?,
    })
}

/// Wraps a typed async handler.
pub(crate) fn typed<Req, Resp, F, Fut>(f: F) -> Handler
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Error>> + Send + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |data| {
        let f = Arc::clone(&f);
        Box::pin(async move {
            let req: Req = decode_optional(data.as_ref()).map_err(|e| {
                Error::server(
                    ErrorCode::InvalidArgument,
                    format!("cannot decode the request: {e}"),
                )
            })?;
            let resp = f(req).await?;
            let payload = Payload::encode(&resp).map_err(|e| {
                Error::server(
                    ErrorCode::Internal,
                    format!("cannot encode the response: {e}"),
                )
            })?;
            Ok(Some(payload))
        })
    })
}
