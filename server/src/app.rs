//! Application hooks: request methods, message handlers and topic authorisation.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sockeye_core::codec::Payload;
use sockeye_core::error::ErrorCode;

use crate::server::Shared;
use crate::PublishError;

/// Who is on the other end of a connection, as decided by authentication.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity(Arc<str>);

impl Identity {
    /// An identity with this name.
    pub fn new(name: impl AsRef<str>) -> Identity {
        Identity(Arc::from(name.as_ref()))
    }

    /// The identity of every connection when authentication is off.
    pub fn anonymous() -> Identity {
        Identity::new("anonymous")
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({:?})", &*self.0)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a connection wants to do with a topic, for [`crate::ServerBuilder::authorize_topics`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicAccess {
    Subscribe,
    Publish,
}

/// An error a request handler answers with: becomes an `err` envelope carrying the request's `id`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
    /// Optional details, sent as the envelope's `d`.
    pub data: Option<Payload>,
}

impl RpcError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// `INVALID_ARGUMENT` with this message.
    pub fn invalid_argument(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorCode::InvalidArgument, message)
    }

    /// `INTERNAL` with this message.
    pub fn internal(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorCode::Internal, message)
    }

    /// Attaches details.
    pub fn with_data(mut self, data: Payload) -> RpcError {
        self.data = Some(data);
        self
    }
}

/// As the core's error type, for its envelope helpers.
impl From<sockeye_core::RequestError> for RpcError {
    fn from(error: sockeye_core::RequestError) -> Self {
        RpcError {
            code: error.code,
            message: error.message,
            data: error.data,
        }
    }
}

impl From<RpcError> for sockeye_core::RequestError {
    fn from(error: RpcError) -> Self {
        sockeye_core::RequestError {
            data: error.data,
            ..sockeye_core::RequestError::local(error.code, error.message)
        }
    }
}

/// The connection a request or message came from, handed to every handler.
#[derive(Clone)]
pub struct Context {
    pub(crate) identity: Identity,
    pub(crate) connection_id: u64,
    pub(crate) shared: Arc<Shared>,
}

impl Context {
    /// The authenticated identity ([`Identity::anonymous`] with auth off).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// A number unique to this connection among all connections of this server.
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }

    /// Publishes `value` to `topic` as if a client had sent `pub` (without asking the topic authoriser):
    /// every subscriber gets an `evt`. Returns how many subscribers it was queued for.
    ///
    /// # Errors
    /// [`PublishError`] when the topic name breaks the rules, `value` cannot be encoded, the event is larger
    /// than the message size limit, or the server's output budget cannot hold it now (`Busy`).
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<usize, PublishError> {
        let data = Payload::encode(value).map_err(PublishError::Encode)?;
        self.shared.publish_from_app(topic, Some(data))
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("identity", &self.identity)
            .field("connection_id", &self.connection_id)
            .finish()
    }
}

/// A type-erased request handler: raw `d` in, raw `d` (or an error) out.
pub(crate) type MethodFn = Arc<
    dyn Fn(Context, Option<Payload>) -> BoxFuture<'static, Result<Option<Payload>, RpcError>>
        + Send
        + Sync,
>;
/// A type-erased message handler; an error is sent back as a connection-level `err` (without `id`).
pub(crate) type MessageFn =
    Arc<dyn Fn(Context, Option<Payload>) -> BoxFuture<'static, Result<(), RpcError>> + Send + Sync>;
/// The topic authoriser.
pub(crate) type AuthorizeFn = Arc<dyn Fn(&Identity, &str, TopicAccess) -> bool + Send + Sync>;

/// The application's hooks, fixed once the server starts.
#[derive(Clone, Default)]
pub(crate) struct App {
    pub methods: HashMap<String, MethodFn>,
    pub messages: HashMap<String, MessageFn>,
    pub authorize: Option<AuthorizeFn>,
}

impl App {
    pub fn may(&self, identity: &Identity, topic: &str, access: TopicAccess) -> bool {
        self.authorize
            .as_ref()
            .is_none_or(|f| f(identity, topic, access))
    }
}

/// Decodes an optional payload as `T`; an absent `d` reads as CBOR `null` (so `()` and `Option<_>` work).
pub(crate) fn decode_payload<T: DeserializeOwned>(data: Option<&Payload>) -> Result<T, RpcError> {
    match data {
        Some(payload) => payload.decode::<T>(),
        None => Payload::null().decode::<T>(),
    }
    .map_err(|e| RpcError::invalid_argument(format!("cannot decode d: {e}")))
}

/// Wraps a typed async request handler.
pub(crate) fn typed_method<Req, Resp, F, Fut>(f: F) -> MethodFn
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |ctx, data| {
        let f = Arc::clone(&f);
        Box::pin(async move {
            let req: Req = decode_payload(data.as_ref())?;
            let resp = f(ctx, req).await?;
            let payload = Payload::encode(&resp)
                .map_err(|e| RpcError::internal(format!("cannot encode the response: {e}")))?;
            Ok(Some(payload))
        })
    })
}

/// Wraps a typed async message handler. A `d` that does not decode as `T` is reported to the sender.
pub(crate) fn typed_message<T, F, Fut>(f: F) -> MessageFn
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(Context, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |ctx, data| {
        let f = Arc::clone(&f);
        Box::pin(async move {
            let value = decode_payload::<T>(data.as_ref())?;
            f(ctx, value).await;
            Ok(())
        })
    })
}
