//! Swapping ops in an optimised tract plan for iscamd's own, through tract's patch API
//! (`TypedModelPatch`), counting what each swap found and replaced so that a swap that
//! stops matching — after a tract update, or on an unusual model — is seen, not silent.

use std::fmt;

use tract_onnx::prelude::*;

/// What one swap found in a plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swapped {
    /// Nodes of the op type the swap looks for.
    pub candidates: usize,
    /// Of which replaced by iscamd's op.
    pub replaced: usize,
}

impl Swapped {
    /// The graph has the op this swap is for, and none was replaced.
    pub fn missed(&self) -> bool {
        self.candidates > 0 && self.replaced == 0
    }
}

/// The swaps made in one plan, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swaps(pub Vec<(&'static str, Swapped)>);

impl Swaps {
    pub fn get(&self, name: &str) -> Option<Swapped> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }
}

impl fmt::Display for Swaps {
    /// `max-pool 3/3, im2col 0/0, …`: replaced of candidates.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(name, s)| format!("{name} {}/{}", s.replaced, s.candidates))
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// What a swap makes of one node of the op type it looks for.
pub enum Swap {
    /// Not what this swap is for (an element-wise op of another kind, say).
    NotMine,
    /// A candidate whose geometry iscamd's op does not cover: tract's op stays.
    Keep,
    /// iscamd's op, computing the same output from the same inputs.
    Replace(Box<dyn TypedOp>),
}

impl<T: TypedOp> From<Option<T>> for Swap {
    fn from(op: Option<T>) -> Swap {
        op.map_or(Swap::Keep, |op| Swap::Replace(Box::new(op)))
    }
}

/// Whether a fact holds plain 8-bit integers: what iscamd's int8 packing ops are for.
pub fn is_8bit(fact: &TypedFact) -> bool {
    [DatumType::I8, DatumType::U8].contains(&fact.datum_type)
}

/// Gives every node of `model` whose op is an `O` the op `swap` makes of it, given its
/// first input's and output's facts. tract's patch checks that the replacement's output
/// fact is compatible with the one it replaces.
pub fn replace_ops<O: TypedOp>(
    model: &mut TypedModel,
    swap: impl Fn(&O, &TypedFact, &TypedFact) -> Swap,
) -> TractResult<Swapped> {
    replace_nodes(model, |_, _, op: &O, input, output| swap(op, input, output))
}

/// As [`replace_ops`], for an op tract does not export: its nodes found by the op's name.
pub fn replace_named(
    model: &mut TypedModel,
    name: &str,
    swap: impl Fn(&TypedNode, &TypedFact, &TypedFact) -> Swap,
) -> TractResult<Swapped> {
    replace_each(model, |_, node, input, output| {
        match node.op().name() == name {
            true => swap(node, input, output),
            false => Swap::NotMine,
        }
    })
}

/// As [`replace_ops`], `swap` also seeing the model and the node (its neighbours).
pub fn replace_nodes<O: TypedOp>(
    model: &mut TypedModel,
    swap: impl Fn(&TypedModel, &TypedNode, &O, &TypedFact, &TypedFact) -> Swap,
) -> TractResult<Swapped> {
    replace_each(model, |model, node, input, output| {
        match node.op_as::<O>() {
            Some(op) => swap(model, node, op, input, output),
            None => Swap::NotMine,
        }
    })
}

/// Gives every node of `model` the op `swap` makes of it.
fn replace_each(
    model: &mut TypedModel,
    swap: impl Fn(&TypedModel, &TypedNode, &TypedFact, &TypedFact) -> Swap,
) -> TractResult<Swapped> {
    let mut swapped = Swapped::default();
    // Patches append nodes: the ones present now are all that can be candidates.
    for id in 0..model.nodes.len() {
        let node = &model.nodes[id];
        // Every op a swap is for reads something.
        let Some(&first) = node.inputs.first() else {
            continue;
        };
        let input = model.outlet_fact(first)?;
        let output = model.outlet_fact(OutletId::new(id, 0))?;
        let new = match swap(model, node, input, output) {
            Swap::NotMine => continue,
            Swap::Keep => {
                swapped.candidates += 1;
                continue;
            }
            Swap::Replace(new) => new,
        };
        swapped.candidates += 1;
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs, new)?;
        patch.apply(model)?;
        swapped.replaced += 1;
    }
    Ok(swapped)
}
