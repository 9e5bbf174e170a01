//! Matching: the questions passes and quantizers ask about the graph around an op, answered once
//! by typed op kinds and registry traits (never by comparing op names).
//!
//! - [`producer_of`], [`producer_with`]: the op defining a value, if it is of a kind (or has a
//!   trait);
//! - [`sole_user`], [`users_of`]: who reads a value;
//! - [`ops_of`]: the ops of some kinds, in program order;
//! - [`ProgramOrder`]: each op's position, computed once per walk (comparing two ops is then
//!   O(1));
//! - [`Mismatch`]: why a pattern did not apply (MLIR's `notifyMatchFailure`), for passes whose
//!   patterns report it.

use std::borrow::Cow;

use super::entity::SideTable;
use super::graph::{Graph, OpId, User, ValueId};
use crate::ops::{OpKind, Traits};

/// The op producing `v`, when it is a `kind` op.
pub fn producer_of(g: &Graph, v: ValueId, kind: OpKind) -> Option<OpId> {
    g.producer(v).filter(|&p| g.op(p).kind() == kind)
}

/// The op producing `v`, when it has any of `traits`.
pub fn producer_with(g: &Graph, v: ValueId, traits: Traits) -> Option<OpId> {
    g.producer(v).filter(|&p| g.op(p).kind().has(traits))
}

/// The one op reading `v` and the operand position it reads it at, when `v` has exactly one
/// use and that use is not a graph output.
pub fn sole_user(g: &Graph, v: ValueId) -> Option<(OpId, usize)> {
    match g.uses(v) {
        [only] => match only.user {
            User::Op(op) => Some((op, only.index as usize)),
            User::Output => None,
        },
        _ => None,
    }
}

/// The `kind` ops reading `v` (an op reading it twice is listed twice).
pub fn users_of(g: &Graph, v: ValueId, kind: OpKind) -> impl Iterator<Item = OpId> + '_ {
    g.uses(v).iter().filter_map(move |u| match u.user {
        User::Op(op) if g.op(op).kind() == kind => Some(op),
        _ => None,
    })
}

/// The live ops of the given kinds, in program order.
pub fn ops_of(g: &Graph, kinds: &[OpKind]) -> Vec<OpId> {
    g.ops().filter(|&op| kinds.contains(&g.op(op).kind())).collect()
}

/// Each live op's position in program order, taken once: O(1) comparisons for a walk that does
/// not reorder ops (ops created after it was taken have no position).
pub struct ProgramOrder {
    /// Position + 1, so that 0 (the table's default) means "not linked when taken".
    positions: SideTable<OpId, u32>,
}

impl ProgramOrder {
    pub fn of(g: &Graph) -> ProgramOrder {
        let mut positions = SideTable::with_capacity(g.num_op_ids());
        for (i, op) in g.ops().enumerate() {
            positions.set(op, u32::try_from(i + 1).unwrap_or(u32::MAX));
        }
        ProgramOrder { positions }
    }

    /// The position of `op` (0 for the first op), or `None` when it was not linked when taken.
    pub fn position(&self, op: OpId) -> Option<usize> {
        match *self.positions.get(op) {
            0 => None,
            p => Some(p as usize - 1),
        }
    }

    /// The position of `op`, with ops that have none sorting last.
    pub fn position_or_last(&self, op: OpId) -> usize {
        self.position(op).unwrap_or(usize::MAX)
    }
}

/// Why a pattern did not apply to an op: what passes report for `--explain-matches`-style
/// debugging instead of silently skipping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch(pub Cow<'static, str>);

impl Mismatch {
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Mismatch {
        Mismatch(reason.into())
    }
}

/// A match: what a pattern found, or why it did not apply.
pub type Match<T> = Result<T, Mismatch>;

/// `Ok(value)` when it is `Some`, else the mismatch `reason`: `require(producer_of(..), "…")?`.
pub fn require<T>(value: Option<T>, reason: &'static str) -> Match<T> {
    value.ok_or(Mismatch(Cow::Borrowed(reason)))
}
