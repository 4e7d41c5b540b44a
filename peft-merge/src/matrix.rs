//! A dense matrix of f64, stored by rows as torch stores a tensor: the LoRA factors and updates that merging
//! combines. Entry-wise combination works on [`Matrix::data`] (torch's `flatten` order); products and
//! stacking are the few operations merging needs beyond that. Adapters are read and written as candle tensors.
//!
//! ```
//! use peft_merge::Matrix;
//! let b = Matrix::new(2, 1, vec![1.0, 2.0]);
//! let a = Matrix::new(1, 3, vec![1.0, 0.0, -1.0]);
//! assert_eq!(b.matmul(&a).data, vec![1.0, 0.0, -1.0, 2.0, 0.0, -2.0]);
//! assert_eq!(a.stack_rows(&[Matrix::zeros(1, 3)]).shape(), [2, 3]);
//! ```

use candle_core::{DType, Device, Tensor};

/// A `rows x cols` matrix, entries by rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// The entries, row after row.
    pub data: Vec<f64>,
}

impl Matrix {
    /// The matrix of `data` (row after row); panics unless it holds `rows * cols` entries.
    pub fn new(rows: usize, cols: usize, data: Vec<f64>) -> Self {
        assert_eq!(data.len(), rows * cols, "a {rows} x {cols} matrix");
        Matrix { rows, cols, data }
    }

    /// The zero matrix.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix::new(rows, cols, vec![0.0; rows * cols])
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// The entry at row `i`, column `j`.
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    /// Every entry times `factor`.
    pub fn scaled(&self, factor: f64) -> Matrix {
        Matrix::new(
            self.rows,
            self.cols,
            self.data.iter().map(|v| v * factor).collect(),
        )
    }

    /// The product `self @ other`.
    pub fn matmul(&self, other: &Matrix) -> Matrix {
        assert_eq!(
            self.cols,
            other.rows,
            "matmul of {:?} and {:?}",
            self.shape(),
            other.shape()
        );
        let mut out = vec![0.0; self.rows * other.cols];
        for i in 0..self.rows {
            for k in 0..self.cols {
                let v = self.at(i, k);
                if v == 0.0 {
                    continue;
                }
                let row = &other.data[k * other.cols..(k + 1) * other.cols];
                for (o, r) in out[i * other.cols..(i + 1) * other.cols]
                    .iter_mut()
                    .zip(row)
                {
                    *o += v * r;
                }
            }
        }
        Matrix::new(self.rows, other.cols, out)
    }

    /// `self` with the rows of `others` below it (torch's `cat(dim=0)`).
    pub fn stack_rows(&self, others: &[Matrix]) -> Matrix {
        let mut data = self.data.clone();
        let mut rows = self.rows;
        for m in others {
            assert_eq!(
                m.cols,
                self.cols,
                "stacking rows of {:?} under {:?}",
                m.shape(),
                self.shape()
            );
            data.extend_from_slice(&m.data);
            rows += m.rows;
        }
        Matrix::new(rows, self.cols, data)
    }

    /// `self` with the columns of `others` to its right (torch's `cat(dim=1)`).
    pub fn stack_cols(&self, others: &[Matrix]) -> Matrix {
        let parts: Vec<&Matrix> = std::iter::once(self).chain(others).collect();
        let cols = parts.iter().map(|m| m.cols).sum();
        let mut data = Vec::with_capacity(self.rows * cols);
        for i in 0..self.rows {
            for m in &parts {
                assert_eq!(
                    m.rows,
                    self.rows,
                    "stacking columns of {:?} beside {:?}",
                    m.shape(),
                    self.shape()
                );
                data.extend_from_slice(&m.data[i * m.cols..(i + 1) * m.cols]);
            }
        }
        Matrix::new(self.rows, cols, data)
    }

    /// `self` with zero rows added below, up to `rows` rows.
    pub fn pad_rows(&self, rows: usize) -> Matrix {
        match rows.checked_sub(self.rows) {
            Some(extra) if extra > 0 => self.stack_rows(&[Matrix::zeros(extra, self.cols)]),
            _ => self.clone(),
        }
    }

    /// `self` with zero columns added to the right, up to `cols` columns.
    pub fn pad_cols(&self, cols: usize) -> Matrix {
        match cols.checked_sub(self.cols) {
            Some(extra) if extra > 0 => self.stack_cols(&[Matrix::zeros(self.rows, extra)]),
            _ => self.clone(),
        }
    }

    /// The largest `|self - other|` entry (infinite where the shapes differ).
    pub fn max_abs_diff(&self, other: &Matrix) -> f64 {
        if self.shape() != other.shape() {
            return f64::INFINITY;
        }
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    }

    /// The matrix of a 2-D tensor of any float dtype; `None` for a tensor of another rank.
    pub fn from_tensor(t: &Tensor) -> candle_core::Result<Option<Matrix>> {
        let &[rows, cols] = t.dims() else {
            return Ok(None);
        };
        let data = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        Ok(Some(Matrix::new(rows, cols, data)))
    }

    /// The tensor of this matrix in `dtype`, on the CPU.
    pub fn to_tensor(&self, dtype: DType) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.data.clone(), (self.rows, self.cols), &Device::Cpu)?.to_dtype(dtype)
    }
}
