//! Which entry of an adapter's per-module list sits at a site: a module-wrapping adapter keeps its layers (and
//! trainable biases) in a list, and its hooks, called with a [`SiteId`], find theirs in constant time.
//!
//! ```
//! use peft_core::spec::SiteId;
//! use peft_core::tuner::SiteIndex;
//! // Layers adapted at sites 1 and 4 of a model with 6 sites.
//! let index = SiteIndex::new(6, [SiteId(1), SiteId(4)]);
//! assert_eq!(index.get(SiteId(4)), Some(1));
//! assert_eq!(index.get(SiteId(2)), None);
//! assert_eq!(index.get(SiteId(9)), None); // a site the model does not have
//! assert_eq!(index.num_sites(), 6);
//! ```

use crate::spec::SiteId;

/// For each site of a model, the position of the entry at that site in an adapter's list, if any.
#[derive(Debug, Clone, Default)]
pub struct SiteIndex(Vec<Option<usize>>);

impl SiteIndex {
    /// The index of a list whose entries sit at `sites`, in list order, on a model of `num_sites` sites.
    ///
    /// # Panics
    /// Where a site is not below `num_sites`: the list was built for another model.
    pub fn new(num_sites: usize, sites: impl IntoIterator<Item = SiteId>) -> Self {
        let mut at = vec![None; num_sites];
        for (i, site) in sites.into_iter().enumerate() {
            assert!(
                site.0 < num_sites,
                "site {} of a model with {num_sites} sites",
                site.0
            );
            at[site.0] = Some(i);
        }
        SiteIndex(at)
    }

    /// The position of the entry at `site`; `None` where the site has none (or the model has no such site).
    pub fn get(&self, site: SiteId) -> Option<usize> {
        self.0.get(site.0).copied().flatten()
    }

    /// The number of sites of the model the index was built for.
    pub fn num_sites(&self) -> usize {
        self.0.len()
    }
}
