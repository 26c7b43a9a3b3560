// Shared helpers of the CPU core: array descriptors passed from Python as raw pointers plus
// sizes and strides, and the checks every entry point runs before touching memory.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <string>

namespace dk {

namespace py = pybind11;

enum class DType { f32, f64 };

inline DType parse_dtype(const std::string& name, const char* arg) {
  if (name == "float32") return DType::f32;
  if (name == "float64") return DType::f64;
  throw py::type_error(std::string(arg) + ": unsupported dtype '" + name +
                       "' (the CPU core takes float32 or float64)");
}

inline std::size_t dtype_size(DType t) { return t == DType::f32 ? 4 : 8; }

// A row-major 2-D array owned by the caller (a torch tensor or numpy array on the Python side).
struct Matrix {
  std::uintptr_t ptr = 0;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;  // in elements
  DType dtype = DType::f32;

  template <typename T>
  T* data() const { return reinterpret_cast<T*>(ptr); }
};

// Builds a Matrix from Python arguments and validates it before any pointer is dereferenced:
// non-negative sizes, unit column stride, row stride >= cols, no size overflow, a non-null and
// aligned pointer whenever there is at least one element.
inline Matrix make_matrix(std::uintptr_t ptr, std::int64_t rows, std::int64_t cols,
                          std::int64_t row_stride, std::int64_t col_stride,
                          const std::string& dtype, const char* arg) {
  Matrix m;
  m.dtype = parse_dtype(dtype, arg);
  const std::string a(arg);
  if (rows < 0 || cols < 0) throw py::value_error(a + ": negative size");
  if (col_stride != 1 && cols > 1)
    throw py::value_error(a + ": rows must be contiguous (column stride 1)");
  if (rows > 1 && row_stride < cols)
    throw py::value_error(a + ": row stride smaller than the number of columns");
  const std::int64_t limit = std::numeric_limits<std::int64_t>::max() / 16;
  if (rows > 0 && (row_stride > limit / rows || cols > limit))
    throw py::value_error(a + ": size overflows");
  if (rows > 0 && cols > 0) {
    if (ptr == 0) throw py::value_error(a + ": null data pointer");
    if (ptr % dtype_size(m.dtype) != 0) throw py::value_error(a + ": misaligned data pointer");
  }
  m.ptr = ptr;
  m.rows = rows;
  m.cols = cols;
  m.row_stride = rows > 1 ? row_stride : cols;
  return m;
}

inline void expect_shape(const Matrix& m, std::int64_t rows, std::int64_t cols, const char* arg) {
  if ((rows >= 0 && m.rows != rows) || (cols >= 0 && m.cols != cols))
    throw py::value_error(std::string(arg) + ": shape (" + std::to_string(m.rows) + ", " +
                          std::to_string(m.cols) + ") does not match the expected (" +
                          std::to_string(rows) + ", " + std::to_string(cols) + ")");
}

}  // namespace dk
