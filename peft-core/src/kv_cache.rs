//! The key/value cache of a decoder-only model during generation: every layer's keys and values so far (a
//! key/value prefix included), the mask over them, the position each key was computed at, and the position
//! each row's next token takes. The prompt runs once; then each step feeds one new token per row.
//!
//! Rows are independent: a row may be left-padded (its pads are masked keys), and caches of different lengths
//! are joined row-wise by left-padding the shorter ones ([`KvCache::concat_rows`]), which is how a request
//! joins a running batch. [`KvCache::select_rows`] drops finished rows and [`KvCache::compact`] the columns no
//! row sees any more.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use peft_core::kv_cache::KvCache;
//! use peft_core::model::CachedKv;
//! let dev = Device::Cpu;
//! let kv = |b: usize, t: usize| CachedKv {
//!     key: Tensor::ones((b, 2, t, 4), DType::F32, &dev).unwrap(),
//!     value: Tensor::ones((b, 2, t, 4), DType::F32, &dev).unwrap(),
//! };
//! let mask = |t: usize| Tensor::ones((1, t), DType::F32, &dev).unwrap();
//! let short = KvCache::from_parts(vec![Some(kv(1, 3))], mask(3), vec![3]).unwrap();
//! let long = KvCache::from_parts(vec![Some(kv(1, 5))], mask(5), vec![5]).unwrap();
//! let both = KvCache::concat_rows(&[short, long]).unwrap();
//! assert_eq!((both.rows(), both.len()), (2, 5));
//! assert_eq!(both.next_positions(), &[3, 5]);
//! // The short row's first two keys are padding.
//! let m: Vec<Vec<f32>> = both.key_mask().unwrap().to_vec2().unwrap();
//! assert_eq!(m[0], vec![0., 0., 1., 1., 1.]);
//! ```

use candle_core::{DType, Tensor};

use crate::error::{PeftError, Result};
use crate::model::CachedKv;

/// Self-attention keys and values of every layer, `[rows, kv_heads, len, head_dim]`, with the key mask
/// `[rows, len]` and each row's next position.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<CachedKv>>,
    key_mask: Option<Tensor>,
    next_positions: Vec<u32>,
}

impl KvCache {
    /// An empty cache: the next forward pass with it is a prompt's (the embeddings and prefix hooks run).
    pub fn new() -> Self {
        KvCache::default()
    }

    /// A cache from its parts: per layer keys and values (every layer present), the `[rows, len]` key mask
    /// and each row's next position.
    pub fn from_parts(
        layers: Vec<Option<CachedKv>>,
        key_mask: Tensor,
        next_positions: Vec<u32>,
    ) -> Result<Self> {
        let (rows, len) = key_mask.dims2()?;
        if next_positions.len() != rows {
            return Err(PeftError::Data(format!(
                "a key/value cache of {rows} rows was given {} next positions",
                next_positions.len()
            )));
        }
        for (i, l) in layers.iter().enumerate() {
            let Some(l) = l else {
                return Err(PeftError::Data(format!(
                    "layer {i} of a key/value cache has no keys"
                )));
            };
            for t in [&l.key, &l.value] {
                let d = t.dims();
                if d.len() != 4 || d[0] != rows || d[2] != len {
                    return Err(PeftError::ShapeMismatch {
                        what: format!("cached keys/values of layer {i}"),
                        expected_from: "the key mask ([rows, kv_heads, len, head_dim])".into(),
                        expected: vec![rows, 0, len, 0],
                        got_from: "the cache".into(),
                        got: d.to_vec(),
                    });
                }
            }
        }
        Ok(KvCache {
            layers,
            key_mask: Some(key_mask.to_dtype(DType::F32)?),
            next_positions,
        })
    }

    /// True before the prompt ran.
    pub fn is_empty(&self) -> bool {
        self.key_mask.is_none()
    }

    /// Cached positions per row (keys, padding included).
    pub fn len(&self) -> usize {
        self.key_mask
            .as_ref()
            .and_then(|m| m.dims2().ok())
            .map_or(0, |d| d.1)
    }

    /// Rows in the cache.
    pub fn rows(&self) -> usize {
        self.next_positions.len()
    }

    /// The keys and values of `layer`.
    pub fn layer(&self, layer: usize) -> Option<&CachedKv> {
        self.layers.get(layer).and_then(|l| l.as_ref())
    }

    /// `[rows, len]` f32 mask: 1 for keys a query may see.
    pub fn key_mask(&self) -> Option<&Tensor> {
        self.key_mask.as_ref()
    }

    /// Per row, the position the next token takes (the count of real keys: prefix, virtual and real tokens).
    pub fn next_positions(&self) -> &[u32] {
        &self.next_positions
    }

    /// Replaces every layer's keys and values, the key mask and the next positions after a forward pass.
    /// Models call it; it checks the shapes as [`KvCache::from_parts`] does.
    pub fn store(
        &mut self,
        layers: Vec<Option<CachedKv>>,
        key_mask: Tensor,
        next_positions: Vec<u32>,
    ) -> Result<()> {
        *self = KvCache::from_parts(layers, key_mask, next_positions)?;
        Ok(())
    }

    /// The cache of rows `rows` only, in that order (finished rows dropped).
    pub fn select_rows(&self, rows: &[usize]) -> Result<KvCache> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.rows()) {
            return Err(PeftError::Data(format!(
                "row {bad} asked of a key/value cache of {} rows",
                self.rows()
            )));
        }
        let Some(mask) = &self.key_mask else {
            return Ok(KvCache::new());
        };
        if rows.is_empty() {
            return Ok(KvCache::new());
        }
        let idx = Tensor::new(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            mask.device(),
        )?;
        let layers = self.map_layers(|t| Ok(t.index_select(&idx, 0)?))?;
        let next = rows.iter().map(|&r| self.next_positions[r]).collect();
        KvCache::from_parts(layers, mask.index_select(&idx, 0)?, next)
    }

    /// Drops the leading columns that every row masks (left padding no row needs any more, once the rows that
    /// needed the length left).
    pub fn compact(&self) -> Result<KvCache> {
        let Some(mask) = &self.key_mask else {
            return Ok(KvCache::new());
        };
        let seen: Vec<f32> = mask.max(0)?.to_vec1()?;
        let drop = seen.iter().take_while(|&&v| v == 0.0).count();
        if drop == 0 {
            return Ok(self.clone());
        }
        let keep = seen.len() - drop;
        let layers = self.map_layers(|t| Ok(t.narrow(2, drop, keep)?))?;
        KvCache::from_parts(
            layers,
            mask.narrow(1, drop, keep)?,
            self.next_positions.clone(),
        )
    }

    /// Every layer's keys and values through `f`.
    fn map_layers(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Vec<Option<CachedKv>>> {
        self.layers
            .iter()
            .map(|l| {
                l.as_ref()
                    .map(|l| -> Result<CachedKv> {
                        Ok(CachedKv {
                            key: f(&l.key)?,
                            value: f(&l.value)?,
                        })
                    })
                    .transpose()
            })
            .collect()
    }

    /// The rows of `caches` one after another, each left-padded with masked zero keys to the longest: how a
    /// prompt that just ran joins the rows already decoding. Empty caches are skipped.
    pub fn concat_rows(caches: &[KvCache]) -> Result<KvCache> {
        let present: Vec<&KvCache> = caches.iter().filter(|c| !c.is_empty()).collect();
        let Some(first) = present.first() else {
            return Ok(KvCache::new());
        };
        if present.len() == 1 {
            return Ok((*first).clone());
        }
        let layers = first.layers.len();
        if let Some(other) = present.iter().find(|c| c.layers.len() != layers) {
            return Err(PeftError::Data(format!(
                "key/value caches of {layers} and {} layers cannot be joined",
                other.layers.len()
            )));
        }
        let len = present.iter().map(|c| c.len()).max().unwrap_or(0);
        let pad = |t: &Tensor, dim: usize| -> Result<Tensor> {
            let have = t.dim(dim)?;
            if have == len {
                return Ok(t.clone());
            }
            let mut dims = t.dims().to_vec();
            dims[dim] = len - have;
            let zeros = Tensor::zeros(dims, t.dtype(), t.device())?;
            Ok(Tensor::cat(&[&zeros, t], dim)?)
        };
        let mut joined = Vec::with_capacity(layers);
        for i in 0..layers {
            let mut keys = Vec::with_capacity(present.len());
            let mut values = Vec::with_capacity(present.len());
            for c in &present {
                let l = c.layer(i).ok_or_else(|| {
                    PeftError::Data(format!("layer {i} of a key/value cache has no keys"))
                })?;
                keys.push(pad(&l.key, 2)?);
                values.push(pad(&l.value, 2)?);
            }
            joined.push(Some(CachedKv {
                key: Tensor::cat(&keys, 0)?,
                value: Tensor::cat(&values, 0)?,
            }));
        }
        let masks = present
            .iter()
            .map(|c| pad(c.key_mask.as_ref().expect("present caches have a mask"), 1))
            .collect::<Result<Vec<_>>>()?;
        let next = present
            .iter()
            .flat_map(|c| c.next_positions.iter().copied())
            .collect();
        KvCache::from_parts(joined, Tensor::cat(&masks, 0)?, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn cache(values: &[f32], mask: &[f32], next: u32) -> KvCache {
        let dev = Device::Cpu;
        let t = values.len();
        let kv = Tensor::from_vec(values.to_vec(), (1, 1, t, 1), &dev).unwrap();
        KvCache::from_parts(
            vec![Some(CachedKv {
                key: kv.clone(),
                value: (kv * 10.0).unwrap(),
            })],
            Tensor::from_vec(mask.to_vec(), (1, t), &dev).unwrap(),
            vec![next],
        )
        .unwrap()
    }

    fn keys(c: &KvCache) -> Vec<Vec<f32>> {
        c.layer(0)
            .unwrap()
            .key
            .squeeze(1)
            .unwrap()
            .squeeze(2)
            .unwrap()
            .to_vec2()
            .unwrap()
    }

    #[test]
    fn joining_left_pads_selecting_keeps_rows_and_compacting_drops_dead_columns() {
        let a = cache(&[1., 2.], &[1., 1.], 2);
        let b = cache(&[3., 4., 5., 6.], &[0., 1., 1., 1.], 3);
        let both = KvCache::concat_rows(&[a, KvCache::new(), b]).unwrap();
        assert_eq!(
            keys(&both),
            vec![vec![0., 0., 1., 2.], vec![3., 4., 5., 6.]]
        );
        assert_eq!(both.next_positions(), &[2, 3]);
        let mask: Vec<Vec<f32>> = both.key_mask().unwrap().to_vec2().unwrap();
        assert_eq!(mask, vec![vec![0., 0., 1., 1.], vec![0., 1., 1., 1.]]);
        // Values move with their keys.
        let v: Vec<f32> = both
            .layer(0)
            .unwrap()
            .value
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(v, vec![0., 0., 10., 20., 30., 40., 50., 60.]);

        let first = both.select_rows(&[0]).unwrap().compact().unwrap();
        assert_eq!(keys(&first), vec![vec![1., 2.]]);
        assert_eq!(first.next_positions(), &[2]);
        let swapped = both.select_rows(&[1, 0]).unwrap().compact().unwrap();
        // Column 0 is masked in both rows: dropped; column 1 is seen by row 0 (the old row 1): kept.
        assert_eq!(keys(&swapped), vec![vec![4., 5., 6.], vec![0., 1., 2.]]);
        assert!(both.select_rows(&[2]).is_err());
        assert!(both.select_rows(&[]).unwrap().is_empty());
    }

    #[test]
    fn mismatched_parts_are_refused() {
        let dev = Device::Cpu;
        let kv = Tensor::zeros((1, 1, 3, 2), DType::F32, &dev).unwrap();
        let layer = CachedKv {
            key: kv.clone(),
            value: kv,
        };
        let mask = Tensor::ones((1, 4), DType::F32, &dev).unwrap();
        assert!(KvCache::from_parts(vec![Some(layer.clone())], mask.clone(), vec![4]).is_err());
        let mask3 = Tensor::ones((1, 3), DType::F32, &dev).unwrap();
        assert!(KvCache::from_parts(vec![Some(layer.clone())], mask3.clone(), vec![]).is_err());
        assert!(KvCache::from_parts(vec![None], mask3.clone(), vec![3]).is_err());
        let two = KvCache::from_parts(
            vec![Some(layer.clone()), Some(layer.clone())],
            mask3.clone(),
            vec![3],
        )
        .unwrap();
        let one = KvCache::from_parts(vec![Some(layer)], mask3, vec![3]).unwrap();
        assert!(KvCache::concat_rows(&[two, one]).is_err());
    }
}
