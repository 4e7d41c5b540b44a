//! `z * scale + shift` over the last dimension (a per-output-feature rescaling, DoRA's `m / ||W + s B A||`), as
//! one op: one pass forward, and one pass backward that yields the input gradient and the column sums for
//! `scale` and `shift` together. candle's broadcast multiply and add take a pass each, plus, backward, a
//! `[rows, out]` product and a strided reduction over the rows for each vector.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let dev = Device::Cpu;
//! let z = Tensor::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap();
//! let scale = Tensor::new(&[10f32, -1.], &dev).unwrap();
//! let shift = Tensor::new(&[0.5f32, 0.], &dev).unwrap();
//! let y = peft_kernels::column_scale(&z, &scale, Some(&shift)).unwrap();
//! assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![10.5, -2.], vec![30.5, -4.]]);
//! ```

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu;
use peft_core::Result;

/// `z * scale + shift` with `z` `[.., out]` and `scale`, `shift` `[out]` (no shift where `None`), with
/// gradients for each argument that is trained.
///
/// Runs one fused CPU op when every argument is f32 on the CPU; otherwise the composed form from candle's
/// broadcast ops, which computes the same function. The backward's column sums add row blocks of a fixed size
/// in a fixed order, so its result does not depend on the number of threads.
pub fn column_scale(z: &Tensor, scale: &Tensor, shift: Option<&Tensor>) -> Result<Tensor> {
    let out = z.dims().last().copied().unwrap_or(0);
    if scale.dims() != [out] || shift.is_some_and(|s| s.dims() != [out]) {
        return Err(candle_core::Error::Msg(format!(
            "column_scale: z {:?} needs scale and shift of shape [{out}], got {:?} and {:?}",
            z.dims(),
            scale.dims(),
            shift.map(Tensor::dims)
        ))
        .into());
    }
    let fused = cpu::covers(z) && cpu::covers(scale) && shift.is_none_or(cpu::covers);
    if !fused {
        let y = z.broadcast_mul(scale)?;
        return Ok(match shift {
            Some(c) => y.broadcast_add(c)?,
            None => y,
        });
    }
    let zeros;
    let shift = match shift {
        Some(c) => c,
        None => {
            zeros = scale.zeros_like()?.detach();
            &zeros
        }
    };
    Ok(z.contiguous()?
        .apply_op3(&scale.contiguous()?, &shift.contiguous()?, ColumnScale)?)
}

/// Elements of `z` per parallel task.
const CHUNK: usize = 1 << 14;

/// Rows per block of the backward's column sums: a fixed number, so that the sums' order is fixed.
fn rows_per_block(out: usize) -> usize {
    (CHUNK / out.max(1)).max(1)
}

struct ColumnScale;

impl CustomOp3 for ColumnScale {
    fn name(&self) -> &'static str {
        "fused-column-scale"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (z, scale, shift) = (
            cpu::slice(s1, l1)?,
            cpu::slice(s2, l2)?,
            cpu::slice(s3, l3)?,
        );
        let out = scale.len();
        let mut y = vec![0f32; z.len()];
        let rows = rows_per_block(out) * out;
        y.par_chunks_mut(rows)
            .zip(z.par_chunks(rows))
            .for_each(|(y, z)| {
                for (y, z) in y.chunks_exact_mut(out).zip(z.chunks_exact(out)) {
                    for (((y, &z), &s), &c) in y.iter_mut().zip(z).zip(scale).zip(shift) {
                        *y = z * s + c;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        z: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (need_z, need_scale, need_shift) = (z.track_op(), scale.track_op(), shift.track_op());
        if grad_res.dims() != z.dims() {
            candle_core::bail!(
                "column_scale: gradient of shape {:?} for an input of shape {:?}",
                grad_res.dims(),
                z.dims()
            );
        }
        let out = scale.dims()[0];
        let rows = rows_per_block(out) * out;
        cpu::with_values(z, |zv| {
            cpu::with_values(scale, |sv| {
                cpu::with_values(grad_res, |g| {
                    let mut dz = if need_z {
                        vec![0f32; g.len()]
                    } else {
                        Vec::new()
                    };
                    // Per row block: its sums of g * z and of g over the rows, collected in block order.
                    let block = |g: &[f32], z: &[f32], dz: Option<&mut [f32]>| {
                        let mut sums = (vec![0f32; out], vec![0f32; out]);
                        if let Some(dz) = dz {
                            for (dz, g) in dz.chunks_exact_mut(out).zip(g.chunks_exact(out)) {
                                for ((dz, &g), &s) in dz.iter_mut().zip(g).zip(sv) {
                                    *dz = g * s;
                                }
                            }
                        }
                        if need_scale || need_shift {
                            for (g, z) in g.chunks_exact(out).zip(z.chunks_exact(out)) {
                                for (((gz, gs), &g), &z) in
                                    sums.0.iter_mut().zip(sums.1.iter_mut()).zip(g).zip(z)
                                {
                                    *gz += g * z;
                                    *gs += g;
                                }
                            }
                        }
                        sums
                    };
                    let partial: Vec<(Vec<f32>, Vec<f32>)> = if need_z {
                        dz.par_chunks_mut(rows)
                            .zip(g.par_chunks(rows).zip(zv.par_chunks(rows)))
                            .map(|(dz, (g, z))| block(g, z, Some(dz)))
                            .collect()
                    } else {
                        g.par_chunks(rows)
                            .zip(zv.par_chunks(rows))
                            .map(|(g, z)| block(g, z, None))
                            .collect()
                    };
                    let (mut dscale, mut dshift) = (vec![0f32; out], vec![0f32; out]);
                    for (gz, gs) in &partial {
                        for ((a, b), (&x, &y)) in dscale
                            .iter_mut()
                            .zip(dshift.iter_mut())
                            .zip(gz.iter().zip(gs))
                        {
                            *a += x;
                            *b += y;
                        }
                    }
                    Ok((
                        need_z.then(|| cpu::tensor(dz, z.dims())).transpose()?,
                        need_scale
                            .then(|| cpu::tensor(dscale, &[out]))
                            .transpose()?,
                        need_shift
                            .then(|| cpu::tensor(dshift, &[out]))
                            .transpose()?,
                    ))
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn values_and_gradients_equal_the_composed_form() {
        let dev = Device::Cpu;
        // More rows than one block, so that the column sums cross blocks.
        let z = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 700, 48), &dev).unwrap()).unwrap();
        let scale = Var::from_tensor(&Tensor::randn(0f32, 1.0, 48, &dev).unwrap()).unwrap();
        let shift = Var::from_tensor(&Tensor::randn(0f32, 1.0, 48, &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (3, 700, 48), &dev).unwrap();
        let (zt, st, ct) = (z.as_tensor(), scale.as_tensor(), shift.as_tensor());
        let fused = column_scale(zt, st, Some(ct)).unwrap();
        let composed = zt.broadcast_mul(st).unwrap().broadcast_add(ct).unwrap();
        assert!(close(&fused, &composed) < 1e-6);
        let gf = fused
            .mul(&r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = composed
            .mul(&r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for t in [zt, st, ct] {
            let d = close(gf.get(t).unwrap(), gc.get(t).unwrap());
            assert!(d < 1e-3, "gradient differs by {d}");
        }
        // Without a shift, and with only the scale trained.
        let plain = column_scale(&zt.detach(), st, None).unwrap();
        let g = plain
            .mul(&r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(zt).is_none());
        assert!(close(g.get(st).unwrap(), gf.get(st).unwrap()) < 1e-3);
        assert!(column_scale(zt, &st.narrow(0, 0, 4).unwrap(), None).is_err());
    }
}
