//! What a task runs a model with: the hooks the model calls at its injection sites, and the trained
//! classification head that only tasks read (an adapter carries it, as HF PEFT's `modules_to_save` does).
//!
//! ```
//! use peft_train::task::Tuned;
//! let frozen = Tuned::frozen();
//! assert!(frozen.classifier().is_none());
//! ```

use peft_core::head::ClassifierHead;
use peft_core::hooks::{Hooks, NoHooks};
use peft_core::method::Adapter;

/// Hooks plus where a classification head comes from.
#[derive(Clone, Copy)]
pub struct Tuned<'a> {
    hooks: &'a dyn Hooks,
    head: Head<'a>,
}

#[derive(Clone, Copy)]
enum Head<'a> {
    None,
    Adapter(&'a dyn Adapter),
    Fixed(&'a ClassifierHead),
}

impl<'a> Tuned<'a> {
    /// The bare frozen model: no hooks, no head (zero-shot evaluation).
    pub fn frozen() -> Tuned<'static> {
        Tuned {
            hooks: &NoHooks,
            head: Head::None,
        }
    }

    /// An adapter's hooks and its head, if it carries one.
    pub fn of(adapter: &'a dyn Adapter) -> Self {
        Tuned {
            hooks: adapter,
            head: Head::Adapter(adapter),
        }
    }

    /// Hooks with a given head (a head loaded or built outside an adapter).
    pub fn with_head(hooks: &'a dyn Hooks, head: &'a ClassifierHead) -> Self {
        Tuned {
            hooks,
            head: Head::Fixed(head),
        }
    }

    /// The same head under other hooks (the adapter's, wrapped: gradient checkpointing).
    pub fn with_hooks<'b>(&self, hooks: &'b dyn Hooks) -> Tuned<'b>
    where
        'a: 'b,
    {
        Tuned {
            hooks,
            head: self.head,
        }
    }

    /// The hooks the model calls.
    pub fn hooks(&self) -> &'a dyn Hooks {
        self.hooks
    }

    /// The classification head, read when the task needs it (so that under `no_grad` its variables are read
    /// detached).
    pub fn classifier(&self) -> Option<ClassifierHead> {
        match self.head {
            Head::None => None,
            Head::Adapter(adapter) => adapter.classifier(),
            Head::Fixed(head) => Some(head.clone()),
        }
    }
}
