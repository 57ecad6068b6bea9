// Small RAII wrappers over the HDF5 C API (files, groups, datasets, attributes), used by the
// checkpoint format and the tools that write HDF5 (`grad`). Not a general HDF5 binding: only the
// types and operations ptrain needs.
//
// Error policy (docs/errors.md): every HDF5 call is checked; a failure throws IoError carrying the
// operation, the object's path, the operating system's cause when there is one ("No space left on
// device (errno 28)", first, on the same line), HDF5's own error stack (printed by nobody: the library's default
// printing is switched off for every thread that calls in) and the wrapper's file:line. Nothing
// here exits. Files are opened with H5F_CLOSE_STRONG, so closing a File closes every object still
// open in it (no leaked handle keeps a file open).
//
// This header does not include <hdf5.h>: ids are held as int64_t (hid_t in HDF5 1.10+), so users
// of the wrappers need neither HDF5's include path nor its macros.
//
// Threading: the HDF5 library here is built thread-safe; each handle must still be used by one
// thread at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ptrain::h5 {

// Element types ptrain stores. kOther: anything else (reported by name in errors).
enum class DType { kFloat32, kFloat64, kInt8, kUInt8, kInt32, kUInt32, kInt64, kUInt64, kString, kOther };

// The stored type of a dataset or attribute, for checks and reports.
struct TypeInfo {
  DType dtype = DType::kOther;
  bool variable_string = false;  // kString: variable-length
  bool utf8 = false;             // kString: UTF-8 character set
  std::string describe() const;  // "float32", "int64", "vlen utf-8 string", ...
};

// An owned HDF5 identifier. Move-only; closes on destruction (errors on that path are ignored:
// callers that must know, e.g. writers, call close() explicitly).
class Handle {
 public:
  Handle() = default;
  Handle(int64_t id, std::string path) : id_(id), path_(std::move(path)) {}
  Handle(Handle&& o) noexcept;
  Handle& operator=(Handle&& o) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle();

  int64_t id() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // "FILE:/group/name", used in messages.
  const std::string& path() const { return path_; }
  void close();  // checked; idempotent

 protected:
  int64_t id_ = -1;
  std::string path_;
};

// Anything that carries attributes (file root, group, dataset).
class Object : public Handle {
 public:
  using Handle::Handle;

  bool has_attr(const std::string& name) const;
  TypeInfo attr_type(const std::string& name) const;
  // Scalar attributes. Strings are written as variable-length UTF-8.
  void set_attr(const std::string& name, std::string_view value);
  void set_attr(const std::string& name, const char* value) { set_attr(name, std::string_view(value)); }
  void set_attr(const std::string& name, int32_t value);
  void set_attr(const std::string& name, int64_t value);
  void set_attr(const std::string& name, uint32_t value);
  void set_attr(const std::string& name, uint64_t value);
  // Reads a scalar string attribute (variable or fixed length). IoError when absent or not a string.
  std::string attr_string(const std::string& name) const;
  // Reads a scalar integer attribute of any integer type, converted (range-checked by HDF5).
  int64_t attr_int64(const std::string& name) const;
  uint64_t attr_uint64(const std::string& name) const;
};

// One mapping of a virtual dataset: the block of the virtual dataset starting at `start` with
// extent `count` (one entry per dimension) reads from dataset `dataset` of file `file`.
struct VirtualMapping {
  std::string file;              // source file name as stored ("." = the same file)
  std::string dataset;           // source dataset path, e.g. "/model/transformer.wte.weight"
  std::vector<int64_t> start;    // virtual block origin
  std::vector<int64_t> count;    // virtual block extent
  bool source_all = true;        // reading: the source selection is the whole source dataset
  bool block = true;             // reading: the virtual selection is one rectangular block
  bool operator==(const VirtualMapping&) const = default;
};

class Dataset : public Object {
 public:
  using Object::Object;

  std::vector<int64_t> shape() const;  // {} for a scalar
  int64_t size() const;                // elements (1 for a scalar)
  TypeInfo type() const;

  // Whole-dataset transfers; the span's size must equal size(). The memory type is the C++ type;
  // HDF5 converts when the stored type differs (callers check type() first when that matters).
  void write(std::span<const float> data);
  void write(std::span<const int32_t> data);
  void write(std::span<const int64_t> data);
  void write(std::span<const uint8_t> data);
  void read(std::span<float> out) const;
  void read(std::span<int32_t> out) const;
  void read(std::span<int64_t> out) const;
  void read(std::span<uint8_t> out) const;

  // Reads `rows` whole rows (dimension 0) starting at row `row_begin`; out.size() must be
  // rows × (product of the other dimensions). For a 1-D dataset a row is one element.
  void read_rows(int64_t row_begin, int64_t rows, std::span<float> out) const;

  // Virtual datasets (sharded checkpoints). The source file names of its mappings as stored
  // ("." = this file); empty for a non-virtual dataset.
  bool is_virtual() const;
  std::vector<std::string> virtual_sources() const;
  // Every mapping, in stored order; empty for a non-virtual dataset.
  std::vector<VirtualMapping> virtual_mappings() const;
};

enum class ObjectKind { kMissing, kGroup, kDataset, kOther };

class Group;

// A file or a group: something that holds links to groups and datasets.
class Location : public Object {
 public:
  using Object::Object;

  // Whether `rel` (a relative path, "a/b/c") names an object; every component is checked, so a
  // missing intermediate group is "no", not an error.
  bool exists(const std::string& rel) const;
  ObjectKind kind(const std::string& rel) const;
  // Names of the direct children, in name order.
  std::vector<std::string> children() const;

  Group create_group(const std::string& name);
  Group open_group(const std::string& rel) const;
  // A contiguous dataset; `shape` {} makes a scalar.
  Dataset create_dataset(const std::string& name, DType dtype, const std::vector<int64_t>& shape);
  Dataset open_dataset(const std::string& rel) const;
  // A virtual dataset of `shape` whose blocks read from other datasets (each mapping's source
  // selection is its whole source dataset, whose shape must equal the mapping's `count`). Source
  // file names are stored as given: a bare name ("shard-0.h5") is found, when read, in the
  // folder of the file holding the virtual dataset (HDF5 1.10 resolution order: see
  // docs/formats.md). Elements no mapping covers, or whose source cannot be opened, read as
  // `fill` (HDF5 does not report a missing source file).
  Dataset create_virtual_dataset(const std::string& name, DType dtype,
                                 const std::vector<int64_t>& shape,
                                 const std::vector<VirtualMapping>& mappings, double fill);
  // Unlinks `rel` (the space is not reclaimed; used by tests and in-place repairs).
  void remove(const std::string& rel);
};

class Group : public Location {
 public:
  using Location::Location;
};

enum class Access { kReadOnly, kReadWrite };

class File : public Location {
 public:
  File() = default;
  // Creates (truncating) `path`. `userblock_bytes` > 0 (512, 1024, ... a power of two): the file
  // starts with that many bytes HDF5 leaves alone (the checksum block of a checkpoint,
  // checksum_block.hpp) and its superblock follows them. IoError naming the path on failure.
  static File create(const std::string& path, uint64_t userblock_bytes = 0);
  // Opens an existing file. IoError naming the path (with HDF5's reason: "file signature not
  // found", "truncated file: eof = ...", "unable to lock file", ...) on failure.
  static File open(const std::string& path, Access access = Access::kReadOnly);

  const std::string& file_name() const { return file_; }
  void flush();

 private:
  File(int64_t id, std::string file) : Location(id, file + ":/"), file_(std::move(file)) {}
  std::string file_;
};

// Whether `path` has the HDF5 signature at offset 0 or, after a 512-byte user block (the only
// size ptrain writes), at offset 512.
bool has_hdf5_signature(const std::string& path);

// What write_file_atomically does besides `fill`.
struct AtomicWriteOptions {
  uint64_t userblock_bytes = 0;  // File::create's
  // Runs on the temp file's path after HDF5 has closed it and before the fsync and rename
  // (writes the checkpoint's checksum block); empty: nothing.
  std::function<void(const std::string& tmp_path)> after_close;
};

// Writes an HDF5 file so that a failure never leaves a partial `path` and never clobbers an
// existing one: `fill` writes into PATH.tmp.<pid>, which is closed, passed to
// `options.after_close`, fsync'd and renamed over `path`; the folder is then fsync'd. On any
// exception the temp file is removed and the exception propagates.
void write_file_atomically(const std::string& path, const std::function<void(File&)>& fill,
                           const AtomicWriteOptions& options = {});

// Tears the HDF5 library down when it goes out of scope: one lives in main(), so this happens
// before static destructors (HDF5's own atexit clean-up is not installed). After any failed close
// (a full disk) the tear-down is skipped: HDF5 1.10 would crash closing a half-closed object
// again, and every file we wrote was already closed and checked.
struct LibraryGuard {
  LibraryGuard() = default;
  LibraryGuard(const LibraryGuard&) = delete;
  LibraryGuard& operator=(const LibraryGuard&) = delete;
  ~LibraryGuard();
};

// "HDF5 library version: 1.10.8"-style version string of the linked library.
std::string library_version();

}  // namespace ptrain::h5
