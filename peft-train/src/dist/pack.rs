//! Tensors through a [`Communicator`]: gradients summed as one packed buffer (one collective per optimiser
//! step, whatever the number of tensors), and named tensors sent from rank 0 to every rank in the safetensors
//! format.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use peft_train::dist::{pack::all_reduce_tensors, SingleProcess};
//! let mut grads = vec![Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap()];
//! all_reduce_tensors(&SingleProcess, &mut grads).unwrap();
//! assert_eq!(grads[0].to_vec1::<f32>().unwrap(), [1., 2.]);
//! ```

use candle_core::{DType, Device, Tensor};

use super::Communicator;
use peft_core::error::{PeftError, Result};

/// Replaces every tensor of `tensors` with its sum over the ranks, packed into one f32 buffer for a single
/// all-reduce. Nothing is copied in a job of one rank.
pub fn all_reduce_tensors(comm: &dyn Communicator, tensors: &mut [Tensor]) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let total: usize = tensors.iter().map(Tensor::elem_count).sum();
    let mut packed = Vec::with_capacity(total);
    for t in tensors.iter() {
        packed.extend(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
    }
    comm.all_reduce_sum_f32(&mut packed)?;
    let mut offset = 0;
    for t in tensors.iter_mut() {
        let n = t.elem_count();
        let summed = Tensor::from_slice(&packed[offset..offset + n], t.shape(), t.device())?;
        *t = summed.to_dtype(t.dtype())?;
        offset += n;
    }
    Ok(())
}

/// Rank 0's `named` tensors on every rank (the other ranks' `named` is ignored), in rank 0's order.
pub fn broadcast_tensors(
    comm: &dyn Communicator,
    named: &[(String, Tensor)],
    device: &Device,
) -> Result<Vec<(String, Tensor)>> {
    if comm.size() == 1 {
        return Ok(named.to_vec());
    }
    let mut bytes = if comm.is_root() {
        let order = serde_json::to_string(&named.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .map_err(|e| PeftError::Communication(e.to_string()))?;
        let metadata = Some(std::collections::HashMap::from([(
            "order".to_string(),
            order,
        )]));
        safetensors::serialize(named.iter().map(|(k, t)| (k.as_str(), t)), metadata)
            .map_err(|e| PeftError::Communication(format!("packing tensors to send: {e}")))?
    } else {
        Vec::new()
    };
    comm.broadcast_bytes(&mut bytes)?;
    let unreadable = |e: String| PeftError::Communication(format!("tensors from rank 0: {e}"));
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| unreadable(e.to_string()))?;
    let order: Vec<String> = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("order"))
        .map(|o| serde_json::from_str(o))
        .transpose()
        .map_err(|e| unreadable(e.to_string()))?
        .ok_or_else(|| unreadable("no tensor order".into()))?;
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
    order
        .into_iter()
        .map(|k| {
            let t = tensors
                .remove(&k)
                .ok_or_else(|| unreadable(format!("`{k}` is missing")))?;
            Ok((k, t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::threads::ThreadGroup;
    use super::*;

    #[test]
    fn gradients_are_summed_over_ranks_and_keep_their_shapes() {
        let results = ThreadGroup::run(3, |comm| {
            let r = comm.rank() as f32;
            let mut grads = vec![
                Tensor::new(&[[r, 1.], [2., r]], &Device::Cpu)?,
                Tensor::new(&[10. * r], &Device::Cpu)?,
            ];
            all_reduce_tensors(comm, &mut grads)?;
            Ok((grads[0].to_vec2::<f32>()?, grads[1].to_vec1::<f32>()?))
        });
        for r in results {
            let (a, b) = r.unwrap();
            assert_eq!(a, vec![vec![3., 3.], vec![6., 3.]]);
            assert_eq!(b, vec![30.]);
        }
    }

    #[test]
    fn every_rank_receives_rank_zeros_tensors_in_its_order() {
        let results = ThreadGroup::run(2, |comm| {
            let mine = if comm.is_root() {
                vec![
                    ("z".to_string(), Tensor::new(&[1f32, 2.], &Device::Cpu)?),
                    ("a".to_string(), Tensor::new(&[[3f32]], &Device::Cpu)?),
                ]
            } else {
                Vec::new()
            };
            let got = broadcast_tensors(comm, &mine, &Device::Cpu)?;
            Ok(got
                .into_iter()
                .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
                .collect::<Vec<_>>())
        });
        for r in results {
            assert_eq!(
                r.unwrap(),
                vec![("z".into(), vec![1., 2.]), ("a".into(), vec![3.])]
            );
        }
    }
}
