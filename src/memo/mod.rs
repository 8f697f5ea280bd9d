//! Every per-stage memo of the request path, and the rules for when each may answer.
//!
//! The memos are [`SlotCache`]s keyed by digests ([`crate::key_digest`]):
//! - verified signatures, by token digest (`verify/`): a token seen again is not
//!   re-verified while the key that verified it is still published;
//! - identities, by issuer and stable claims (`mapping/`), for issuers whose rules
//!   [`rules::reads_only_stable_claims`] allows;
//! - policy decisions, by everything the decision depends on (`policy/`), unless a policy
//!   reads the time ([`rules::cedar_reads_context`]);
//! - Cedar IP values, by address text (`policy/`).
//!
//! Each memo is per config revision: a reload builds new ones.

pub mod rules;
mod slots;

pub use slots::{Digest, SlotCache, digest_parts};
