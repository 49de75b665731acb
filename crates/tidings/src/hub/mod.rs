//! The hub layer: the handshake, the hub protocol's session, method
//! dispatch, the lifetime manager (delivery and groups), hub contexts and
//! typed client proxies — ASP.NET Core's `SignalR.Core`. It runs on the
//! connection layer ([`crate::connections`]) as one of its applications
//! ([`handler::HubHandler`]); nothing there names anything here.

pub(crate) mod application;
pub(crate) mod backplane;
pub(crate) mod call;
pub(crate) mod connection;
pub(crate) mod context;
pub(crate) mod definition;
pub(crate) mod dispatch;
pub(crate) mod endpoint;
pub(crate) mod filter;
pub(crate) mod handler;
pub(crate) mod handover;
pub(crate) mod handshake;
pub(crate) mod lifetime;
pub(crate) mod message;
pub(crate) mod options;
pub(crate) mod resume;
pub(crate) mod session;
pub(crate) mod typed;
pub(crate) mod upload;
