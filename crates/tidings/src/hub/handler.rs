//! [`HubHandler`]: the state behind a mounted hub, shared by its
//! connections (the application the connection layer serves, see
//! `hub::application`).

use std::sync::Arc;

use crate::{
    auth::{Policies, UserIdProvider},
    hub::{context::HubShared, definition::Hub, dispatch::Methods, filter::HubFilter},
    shutdown::Shutdown,
};

/// The hub filters of an endpoint, shared with its connections.
pub(crate) type Filters = Arc<[Arc<dyn HubFilter>]>;

/// The state behind a mounted hub, shared by its connections.
pub(crate) struct HubHandler<H: Hub> {
    pub hub: Arc<H>,
    pub methods: Methods<H>,
    pub shared: Arc<HubShared>,
    pub shutdown: Shutdown,
    /// Named authorization policies.
    pub policies: Policies,
    pub user_ids: Option<UserIdProvider>,
    /// Hub filters, in order.
    pub filters: Filters,
}
