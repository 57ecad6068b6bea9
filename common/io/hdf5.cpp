// HDF5 C API behind the wrappers of hdf5.hpp. Every call goes through PTRAIN_H5_CHECK, which
// switches off HDF5's default error printing for the calling thread (the library is thread-safe
// built, so error stacks and their auto-print setting are per thread), runs the call, and on a
// negative result turns HDF5's error stack into an IoError message with our file:line.
#include "common/io/hdf5.hpp"

#include "common/error.hpp"
#include "common/util/fs.hpp"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <type_traits>

static_assert(std::is_same_v<hid_t, int64_t>, "hdf5.hpp stores hid_t as int64_t (HDF5 >= 1.10)");

namespace ptrain::h5 {
namespace {

// Turns off HDF5's automatic stack printing for this thread (once).
void silence_errors() {
  thread_local bool done = false;
  if (!done) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    done = true;
  }
}

// HDF5's error stack of this thread, outermost (API call) first, consecutive repeats dropped;
// then clears it.
std::string take_error_stack() {
  std::vector<std::string> parts;
  auto walk = [](unsigned, const H5E_error2_t* err, void* client) -> herr_t {
    auto* out = static_cast<std::vector<std::string>*>(client);
    std::string desc = err->desc ? err->desc : "";
    if (desc.empty()) {
      char buf[256] = {0};
      if (H5Eget_msg(err->min_num, nullptr, buf, sizeof buf) > 0) desc = buf;
    }
    if (!desc.empty() && (out->empty() || out->back() != desc)) out->push_back(std::move(desc));
    return 0;
  };
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk, &parts);
  H5Eclear2(H5E_DEFAULT);
  std::string msg;
  for (const auto& p : parts) {
    if (!msg.empty()) msg += ": ";
    msg += p;
  }
  return msg.empty() ? std::string("unknown HDF5 error") : msg;
}

// The operating system's reason inside an HDF5 error stack ("... errno = 28, error message = 'No
// space left on device' ..."), as "No space left on device (errno 28)"; "" when there is none.
std::string os_cause(const std::string& stack) {
  const auto at = stack.find("errno = ");
  if (at == std::string::npos) return "";
  const int err = std::atoi(stack.c_str() + at + 8);
  if (err <= 0) return "";
  return fmt::format("{} (errno {})", std::strerror(err), err);
}

// One line: HDF5 puts a newline inside its driver messages.
std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

[[noreturn]] void fail(const char* src, int line, const std::string& what) {
  const std::string stack = one_line(take_error_stack());
  const std::string cause = os_cause(stack);
  // The cause a user can act on (a full disk, a permission) comes first; HDF5's stack follows.
  throw IoError(fmt::format("{}: {}{} [{}:{}]", what, cause.empty() ? "" : cause + "; HDF5: ",
                            stack, std::filesystem::path(src).filename().string(), line));
}

// Set once an HDF5 object failed to close (e.g. after ENOSPC): HDF5 1.10 then keeps a
// half-closed object that its own clean-up at exit would close again and crash on, so
// LibraryGuard does not tear the library down after that.
std::atomic<bool> g_close_failed{false};
// Failed closes in destructors on this thread (they cannot throw), with the last reason:
// write_file_atomically refuses to rename a file one of whose objects did not close.
thread_local uint64_t t_swallowed_closes = 0;
thread_local std::string t_last_swallowed;

// HDF5 must not install its own atexit clean-up: it would run after our static destructors and,
// after a failed close, crash (LibraryGuard tears it down at the end of main instead). This
// must come before any other HDF5 call, hence a static initialiser of the file that makes them.
[[maybe_unused]] const bool kNoAtexit = [] {
  H5dont_atexit();
  return true;
}();

}  // namespace
}  // namespace ptrain::h5

// Runs an HDF5 call returning hid_t/herr_t/htri_t/ssize_t; negative = failure → IoError whose
// message is the formatted context, HDF5's error stack and this file:line.
#define PTRAIN_H5_CHECK(expr, ...)                                                 \
  [&]() {                                                                          \
    ::ptrain::h5::silence_errors();                                                \
    auto ptrain_h5_rc_ = (expr);                                                   \
    if (ptrain_h5_rc_ < 0) ::ptrain::h5::fail(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__)); \
    return ptrain_h5_rc_;                                                          \
  }()

namespace ptrain::h5 {
namespace {

// Owned temporary ids (types, spaces, property lists) inside one function.
struct Temp {
  hid_t id = -1;
  herr_t (*close)(hid_t) = nullptr;
  Temp(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  Temp(const Temp&) = delete;
  Temp& operator=(const Temp&) = delete;
  ~Temp() {
    if (id >= 0 && close) close(id);
  }
};

hid_t file_type(DType t) {
  switch (t) {
    case DType::kFloat32: return H5T_IEEE_F32LE;
    case DType::kFloat64: return H5T_IEEE_F64LE;
    case DType::kInt8: return H5T_STD_I8LE;
    case DType::kUInt8: return H5T_STD_U8LE;
    case DType::kInt32: return H5T_STD_I32LE;
    case DType::kUInt32: return H5T_STD_U32LE;
    case DType::kInt64: return H5T_STD_I64LE;
    case DType::kUInt64: return H5T_STD_U64LE;
    default: break;
  }
  throw InternalError(fmt::format("hdf5: no file type for dtype {}", static_cast<int>(t)));
}

TypeInfo describe_type(hid_t type) {
  TypeInfo info;
  const H5T_class_t cls = H5Tget_class(type);
  const size_t size = H5Tget_size(type);
  if (cls == H5T_FLOAT) {
    info.dtype = size == 4 ? DType::kFloat32 : size == 8 ? DType::kFloat64 : DType::kOther;
  } else if (cls == H5T_INTEGER) {
    const bool is_signed = H5Tget_sign(type) == H5T_SGN_2;
    switch (size) {
      case 1: info.dtype = is_signed ? DType::kInt8 : DType::kUInt8; break;
      case 4: info.dtype = is_signed ? DType::kInt32 : DType::kUInt32; break;
      case 8: info.dtype = is_signed ? DType::kInt64 : DType::kUInt64; break;
      default: info.dtype = DType::kOther;
    }
  } else if (cls == H5T_STRING) {
    info.dtype = DType::kString;
    info.variable_string = H5Tis_variable_str(type) > 0;
    info.utf8 = H5Tget_cset(type) == H5T_CSET_UTF8;
  }
  return info;
}

// A variable-length UTF-8 string type (caller closes).
hid_t vlen_utf8_type() {
  hid_t t = PTRAIN_H5_CHECK(H5Tcopy(H5T_C_S1), "cannot create a string type");
  Temp guard(t, H5Tclose);
  PTRAIN_H5_CHECK(H5Tset_size(t, H5T_VARIABLE), "cannot create a string type");
  PTRAIN_H5_CHECK(H5Tset_cset(t, H5T_CSET_UTF8), "cannot create a string type");
  guard.id = -1;
  return t;
}

std::string join_path(const std::string& base, const std::string& rel) {
  if (!base.empty() && base.back() == '/') return base + rel;
  return base + "/" + rel;
}

}  // namespace

std::string TypeInfo::describe() const {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kInt8: return "int8";
    case DType::kUInt8: return "uint8";
    case DType::kInt32: return "int32";
    case DType::kUInt32: return "uint32";
    case DType::kInt64: return "int64";
    case DType::kUInt64: return "uint64";
    case DType::kString:
      return fmt::format("{} {} string", variable_string ? "variable-length" : "fixed-length",
                         utf8 ? "UTF-8" : "ASCII");
    case DType::kOther: break;
  }
  return "unsupported type";
}

// ---- Handle ----------------------------------------------------------------------------------

Handle::Handle(Handle&& o) noexcept : id_(o.id_), path_(std::move(o.path_)) { o.id_ = -1; }

namespace {
// Drops a reference from a destructor (no throwing): a failure is recorded, not lost.
void release_quietly(hid_t id, const std::string& path) noexcept {
  silence_errors();
  if (H5Idec_ref(id) < 0) {
    g_close_failed = true;
    ++t_swallowed_closes;
    try {
      t_last_swallowed = fmt::format("cannot close {}: {}", path, one_line(take_error_stack()));
    } catch (...) {
    }
  }
  H5Eclear2(H5E_DEFAULT);
}
}  // namespace

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    if (id_ >= 0) release_quietly(id_, path_);
    id_ = o.id_;
    path_ = std::move(o.path_);
    o.id_ = -1;
  }
  return *this;
}

Handle::~Handle() {
  if (id_ >= 0) release_quietly(id_, path_);
}

void Handle::close() {
  if (id_ < 0) return;
  const hid_t id = id_;
  id_ = -1;
  try {
    if (H5Iget_type(id) == H5I_FILE) {
      // Flushed first, checked: a buffer that cannot reach the disk is an error here, not a
      // silently short file.
      PTRAIN_H5_CHECK(H5Fflush(id, H5F_SCOPE_LOCAL), "cannot flush {}", path_);
      PTRAIN_H5_CHECK(H5Fclose(id), "cannot close {}", path_);
    } else {
      PTRAIN_H5_CHECK(H5Idec_ref(id), "cannot close {}", path_);
    }
  } catch (...) {
    g_close_failed = true;
    if (H5Iis_valid(id) > 0) release_quietly(id, path_);
    throw;
  }
}

// ---- Object: attributes ------------------------------------------------------------------------

bool Object::has_attr(const std::string& name) const {
  return PTRAIN_H5_CHECK(H5Aexists(id_, name.c_str()), "cannot look up attribute {} of {}", name,
                         path_) > 0;
}

namespace {
hid_t open_attr(hid_t obj, const std::string& obj_path, const std::string& name) {
  silence_errors();
  if (H5Aexists(obj, name.c_str()) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    throw IoError(fmt::format("{}: attribute `{}` is missing", obj_path, name));
  }
  return PTRAIN_H5_CHECK(H5Aopen(obj, name.c_str(), H5P_DEFAULT), "cannot open attribute {} of {}",
                         name, obj_path);
}

void write_scalar_attr(hid_t obj, const std::string& obj_path, const std::string& name,
                       hid_t file_t, hid_t mem_t, const void* value) {
  if (PTRAIN_H5_CHECK(H5Aexists(obj, name.c_str()), "cannot look up attribute {} of {}", name,
                      obj_path) > 0) {
    PTRAIN_H5_CHECK(H5Adelete(obj, name.c_str()), "cannot replace attribute {} of {}", name,
                    obj_path);
  }
  Temp space(PTRAIN_H5_CHECK(H5Screate(H5S_SCALAR), "cannot create a dataspace"), H5Sclose);
  Temp attr(PTRAIN_H5_CHECK(H5Acreate2(obj, name.c_str(), file_t, space.id, H5P_DEFAULT,
                                       H5P_DEFAULT),
                            "cannot create attribute {} of {}", name, obj_path),
            H5Aclose);
  PTRAIN_H5_CHECK(H5Awrite(attr.id, mem_t, value), "cannot write attribute {} of {}", name,
                  obj_path);
}

void check_scalar_attr(hid_t attr, const std::string& obj_path, const std::string& name) {
  Temp space(PTRAIN_H5_CHECK(H5Aget_space(attr), "cannot read attribute {} of {}", name, obj_path),
             H5Sclose);
  const H5S_class_t cls = H5Sget_simple_extent_type(space.id);
  const hssize_t n = H5Sget_simple_extent_npoints(space.id);
  if (cls != H5S_SCALAR && n != 1) {
    throw IoError(fmt::format("{}: attribute `{}` is not a scalar ({} elements)", obj_path, name, n));
  }
}
}  // namespace

TypeInfo Object::attr_type(const std::string& name) const {
  Temp attr(open_attr(id_, path_, name), H5Aclose);
  Temp type(PTRAIN_H5_CHECK(H5Aget_type(attr.id), "cannot read the type of attribute {} of {}",
                            name, path_),
            H5Tclose);
  return describe_type(type.id);
}

void Object::set_attr(const std::string& name, std::string_view value) {
  Temp type(vlen_utf8_type(), H5Tclose);
  const std::string copy(value);  // NUL-terminated
  const char* ptr = copy.c_str();
  write_scalar_attr(id_, path_, name, type.id, type.id, &ptr);
}

void Object::set_attr(const std::string& name, int32_t value) {
  write_scalar_attr(id_, path_, name, H5T_STD_I32LE, H5T_NATIVE_INT32, &value);
}
void Object::set_attr(const std::string& name, int64_t value) {
  write_scalar_attr(id_, path_, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}
void Object::set_attr(const std::string& name, uint32_t value) {
  write_scalar_attr(id_, path_, name, H5T_STD_U32LE, H5T_NATIVE_UINT32, &value);
}
void Object::set_attr(const std::string& name, uint64_t value) {
  write_scalar_attr(id_, path_, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &value);
}

std::string Object::attr_string(const std::string& name) const {
  Temp attr(open_attr(id_, path_, name), H5Aclose);
  check_scalar_attr(attr.id, path_, name);
  Temp type(PTRAIN_H5_CHECK(H5Aget_type(attr.id), "cannot read attribute {} of {}", name, path_),
            H5Tclose);
  const TypeInfo info = describe_type(type.id);
  if (info.dtype != DType::kString) {
    throw IoError(fmt::format("{}: attribute `{}` is {}, expected a string", path_, name,
                              info.describe()));
  }
  if (info.variable_string) {
    Temp mem(vlen_utf8_type(), H5Tclose);
    char* s = nullptr;
    PTRAIN_H5_CHECK(H5Aread(attr.id, mem.id, &s), "cannot read attribute {} of {}", name, path_);
    std::string out = s ? s : "";
    if (s) H5free_memory(s);
    return out;
  }
  const size_t size = H5Tget_size(type.id);
  std::string buf(size, '\0');
  Temp mem(PTRAIN_H5_CHECK(H5Tcopy(H5T_C_S1), "cannot create a string type"), H5Tclose);
  PTRAIN_H5_CHECK(H5Tset_size(mem.id, size), "cannot create a string type");
  PTRAIN_H5_CHECK(H5Aread(attr.id, mem.id, buf.data()), "cannot read attribute {} of {}", name,
                  path_);
  const auto nul = buf.find('\0');
  if (nul != std::string::npos) buf.resize(nul);
  return buf;
}

int64_t Object::attr_int64(const std::string& name) const {
  Temp attr(open_attr(id_, path_, name), H5Aclose);
  check_scalar_attr(attr.id, path_, name);
  Temp type(PTRAIN_H5_CHECK(H5Aget_type(attr.id), "cannot read attribute {} of {}", name, path_),
            H5Tclose);
  if (H5Tget_class(type.id) != H5T_INTEGER) {
    throw IoError(fmt::format("{}: attribute `{}` is {}, expected an integer", path_, name,
                              describe_type(type.id).describe()));
  }
  int64_t v = 0;
  PTRAIN_H5_CHECK(H5Aread(attr.id, H5T_NATIVE_INT64, &v), "cannot read attribute {} of {}", name,
                  path_);
  return v;
}

uint64_t Object::attr_uint64(const std::string& name) const {
  Temp attr(open_attr(id_, path_, name), H5Aclose);
  check_scalar_attr(attr.id, path_, name);
  Temp type(PTRAIN_H5_CHECK(H5Aget_type(attr.id), "cannot read attribute {} of {}", name, path_),
            H5Tclose);
  if (H5Tget_class(type.id) != H5T_INTEGER) {
    throw IoError(fmt::format("{}: attribute `{}` is {}, expected an integer", path_, name,
                              describe_type(type.id).describe()));
  }
  uint64_t v = 0;
  PTRAIN_H5_CHECK(H5Aread(attr.id, H5T_NATIVE_UINT64, &v), "cannot read attribute {} of {}", name,
                  path_);
  return v;
}

// ---- Dataset ---------------------------------------------------------------------------------

std::vector<int64_t> Dataset::shape() const {
  Temp space(PTRAIN_H5_CHECK(H5Dget_space(id_), "cannot read the shape of {}", path_), H5Sclose);
  const int rank = PTRAIN_H5_CHECK(H5Sget_simple_extent_ndims(space.id),
                                   "cannot read the shape of {}", path_);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank > 0) {
    PTRAIN_H5_CHECK(H5Sget_simple_extent_dims(space.id, dims.data(), nullptr),
                    "cannot read the shape of {}", path_);
  }
  return std::vector<int64_t>(dims.begin(), dims.end());
}

int64_t Dataset::size() const {
  int64_t n = 1;
  for (int64_t d : shape()) n *= d;
  return n;
}

TypeInfo Dataset::type() const {
  Temp type(PTRAIN_H5_CHECK(H5Dget_type(id_), "cannot read the type of {}", path_), H5Tclose);
  return describe_type(type.id);
}

namespace {
template <class T>
void dataset_io(const Dataset& ds, hid_t mem_type, T* data, size_t n, bool writing) {
  const int64_t want = ds.size();
  if (static_cast<int64_t>(n) != want) {
    throw InternalError(fmt::format("{}: {} {} elements, the dataset has {}", ds.path(),
                                    writing ? "writing" : "reading", n, want));
  }
  if (writing) {
    PTRAIN_H5_CHECK(H5Dwrite(ds.id(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data),
                    "cannot write {}", ds.path());
  } else {
    PTRAIN_H5_CHECK(H5Dread(ds.id(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data),
                    "cannot read {}", ds.path());
  }
}
}  // namespace

void Dataset::write(std::span<const float> d) {
  dataset_io(*this, H5T_NATIVE_FLOAT, const_cast<float*>(d.data()), d.size(), true);
}
void Dataset::write(std::span<const int32_t> d) {
  dataset_io(*this, H5T_NATIVE_INT32, const_cast<int32_t*>(d.data()), d.size(), true);
}
void Dataset::write(std::span<const int64_t> d) {
  dataset_io(*this, H5T_NATIVE_INT64, const_cast<int64_t*>(d.data()), d.size(), true);
}
void Dataset::write(std::span<const uint8_t> d) {
  dataset_io(*this, H5T_NATIVE_UINT8, const_cast<uint8_t*>(d.data()), d.size(), true);
}
void Dataset::read(std::span<float> d) const {
  dataset_io(*this, H5T_NATIVE_FLOAT, d.data(), d.size(), false);
}
void Dataset::read(std::span<int32_t> d) const {
  dataset_io(*this, H5T_NATIVE_INT32, d.data(), d.size(), false);
}
void Dataset::read(std::span<int64_t> d) const {
  dataset_io(*this, H5T_NATIVE_INT64, d.data(), d.size(), false);
}
void Dataset::read(std::span<uint8_t> d) const {
  dataset_io(*this, H5T_NATIVE_UINT8, d.data(), d.size(), false);
}

void Dataset::read_rows(int64_t row_begin, int64_t rows, std::span<float> out) const {
  const std::vector<int64_t> dims = shape();
  if (dims.empty()) throw InternalError(fmt::format("{}: read_rows on a scalar dataset", path_));
  int64_t row = 1;
  for (size_t i = 1; i < dims.size(); ++i) row *= dims[i];
  if (row_begin < 0 || rows < 0 || row_begin + rows > dims[0] ||
      static_cast<int64_t>(out.size()) != rows * row) {
    throw InternalError(fmt::format("{}: reading rows [{}, {}) into {} floats; the dataset has {} "
                                    "rows of {}",
                                    path_, row_begin, row_begin + rows, out.size(), dims[0], row));
  }
  if (rows == 0) return;
  std::vector<hsize_t> start(dims.size(), 0), count(dims.begin(), dims.end());
  start[0] = static_cast<hsize_t>(row_begin);
  count[0] = static_cast<hsize_t>(rows);
  Temp file_space(PTRAIN_H5_CHECK(H5Dget_space(id_), "cannot read {}", path_), H5Sclose);
  PTRAIN_H5_CHECK(H5Sselect_hyperslab(file_space.id, H5S_SELECT_SET, start.data(), nullptr,
                                      count.data(), nullptr),
                  "cannot select rows [{}, {}) of {}", row_begin, row_begin + rows, path_);
  const hsize_t n = static_cast<hsize_t>(out.size());
  Temp mem_space(PTRAIN_H5_CHECK(H5Screate_simple(1, &n, nullptr), "cannot read {}", path_),
                 H5Sclose);
  PTRAIN_H5_CHECK(H5Dread(id_, H5T_NATIVE_FLOAT, mem_space.id, file_space.id, H5P_DEFAULT,
                          out.data()),
                  "cannot read rows [{}, {}) of {}", row_begin, row_begin + rows, path_);
}

bool Dataset::is_virtual() const {
  Temp dcpl(PTRAIN_H5_CHECK(H5Dget_create_plist(id_), "cannot read the layout of {}", path_),
            H5Pclose);
  return PTRAIN_H5_CHECK(H5Pget_layout(dcpl.id), "cannot read the layout of {}", path_) ==
         H5D_VIRTUAL;
}

std::vector<std::string> Dataset::virtual_sources() const {
  std::vector<std::string> out;
  Temp dcpl(PTRAIN_H5_CHECK(H5Dget_create_plist(id_), "cannot read the layout of {}", path_),
            H5Pclose);
  if (PTRAIN_H5_CHECK(H5Pget_layout(dcpl.id), "cannot read the layout of {}", path_) !=
      H5D_VIRTUAL) {
    return out;
  }
  size_t count = 0;
  PTRAIN_H5_CHECK(H5Pget_virtual_count(dcpl.id, &count), "cannot read the mappings of {}", path_);
  for (size_t i = 0; i < count; ++i) {
    const ssize_t len = PTRAIN_H5_CHECK(H5Pget_virtual_filename(dcpl.id, i, nullptr, 0),
                                        "cannot read the mappings of {}", path_);
    std::string name(static_cast<size_t>(len) + 1, '\0');
    PTRAIN_H5_CHECK(H5Pget_virtual_filename(dcpl.id, i, name.data(), name.size()),
                    "cannot read the mappings of {}", path_);
    name.resize(static_cast<size_t>(len));
    out.push_back(std::move(name));
  }
  return out;
}

std::vector<VirtualMapping> Dataset::virtual_mappings() const {
  std::vector<VirtualMapping> out;
  Temp dcpl(PTRAIN_H5_CHECK(H5Dget_create_plist(id_), "cannot read the layout of {}", path_),
            H5Pclose);
  if (PTRAIN_H5_CHECK(H5Pget_layout(dcpl.id), "cannot read the layout of {}", path_) !=
      H5D_VIRTUAL) {
    return out;
  }
  size_t count = 0;
  PTRAIN_H5_CHECK(H5Pget_virtual_count(dcpl.id, &count), "cannot read the mappings of {}", path_);
  auto get_string = [&](auto getter, size_t i) {
    const ssize_t len = PTRAIN_H5_CHECK(getter(dcpl.id, i, nullptr, 0),
                                        "cannot read the mappings of {}", path_);
    std::string s(static_cast<size_t>(len) + 1, '\0');
    PTRAIN_H5_CHECK(getter(dcpl.id, i, s.data(), s.size()), "cannot read the mappings of {}",
                    path_);
    s.resize(static_cast<size_t>(len));
    return s;
  };
  for (size_t i = 0; i < count; ++i) {
    VirtualMapping m;
    m.file = get_string(H5Pget_virtual_filename, i);
    m.dataset = get_string(H5Pget_virtual_dsetname, i);
    Temp vspace(PTRAIN_H5_CHECK(H5Pget_virtual_vspace(dcpl.id, i),
                                "cannot read the mappings of {}", path_),
                H5Sclose);
    const int rank = PTRAIN_H5_CHECK(H5Sget_simple_extent_ndims(vspace.id),
                                     "cannot read the mappings of {}", path_);
    std::vector<hsize_t> lo(static_cast<size_t>(rank)), hi(static_cast<size_t>(rank));
    const H5S_sel_type sel = H5Sget_select_type(vspace.id);
    hssize_t points = PTRAIN_H5_CHECK(H5Sget_select_npoints(vspace.id),
                                      "cannot read the mappings of {}", path_);
    if (rank > 0 && points > 0) {
      PTRAIN_H5_CHECK(H5Sget_select_bounds(vspace.id, lo.data(), hi.data()),
                      "cannot read the mappings of {}", path_);
    }
    hssize_t box = 1;
    for (int d = 0; d < rank; ++d) {
      m.start.push_back(static_cast<int64_t>(lo[static_cast<size_t>(d)]));
      const int64_t ext = points > 0 ? static_cast<int64_t>(hi[static_cast<size_t>(d)] -
                                                            lo[static_cast<size_t>(d)] + 1)
                                     : 0;
      m.count.push_back(ext);
      box *= ext;
    }
    m.block = (sel == H5S_SEL_HYPERSLABS || sel == H5S_SEL_ALL) && points == box;
    Temp sspace(PTRAIN_H5_CHECK(H5Pget_virtual_srcspace(dcpl.id, i),
                                "cannot read the mappings of {}", path_),
                H5Sclose);
    const H5S_sel_type ssel = H5Sget_select_type(sspace.id);
    const hssize_t spoints = H5Sget_select_npoints(sspace.id);
    const hssize_t sextent = H5Sget_simple_extent_npoints(sspace.id);
    m.source_all = ssel == H5S_SEL_ALL || (spoints >= 0 && spoints == sextent);
    out.push_back(std::move(m));
  }
  return out;
}

// ---- Location --------------------------------------------------------------------------------

bool Location::exists(const std::string& rel) const { return kind(rel) != ObjectKind::kMissing; }

ObjectKind Location::kind(const std::string& rel) const {
  // H5Lexists fails (rather than answering no) when an intermediate component is missing, so
  // walk the components one by one.
  std::string prefix;
  size_t start = 0;
  while (start <= rel.size()) {
    size_t slash = rel.find('/', start);
    if (slash == std::string::npos) slash = rel.size();
    if (slash > start) {
      if (!prefix.empty()) prefix += '/';
      prefix += rel.substr(start, slash - start);
      if (PTRAIN_H5_CHECK(H5Lexists(id_, prefix.c_str(), H5P_DEFAULT), "cannot look up {} in {}",
                          prefix, path_) <= 0) {
        return ObjectKind::kMissing;
      }
    }
    start = slash + 1;
  }
  if (prefix.empty()) return ObjectKind::kGroup;
  H5O_info_t info;
  silence_errors();
  if (H5Oget_info_by_name2(id_, prefix.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT) < 0) {
    // A link whose target cannot be resolved (e.g. a dangling external link).
    H5Eclear2(H5E_DEFAULT);
    return ObjectKind::kMissing;
  }
  switch (info.type) {
    case H5O_TYPE_GROUP: return ObjectKind::kGroup;
    case H5O_TYPE_DATASET: return ObjectKind::kDataset;
    default: return ObjectKind::kOther;
  }
}

std::vector<std::string> Location::children() const {
  std::vector<std::string> names;
  auto cb = [](hid_t, const char* name, const H5L_info_t*, void* client) -> herr_t {
    static_cast<std::vector<std::string>*>(client)->emplace_back(name);
    return 0;
  };
  PTRAIN_H5_CHECK(H5Literate(id_, H5_INDEX_NAME, H5_ITER_INC, nullptr, cb, &names),
                  "cannot list {}", path_);
  return names;
}

Group Location::create_group(const std::string& name) {
  const std::string p = join_path(path_, name);
  hid_t g = PTRAIN_H5_CHECK(H5Gcreate2(id_, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                            "cannot create group {}", p);
  return Group(g, p);
}

Group Location::open_group(const std::string& rel) const {
  const std::string p = join_path(path_, rel);
  if (kind(rel) != ObjectKind::kGroup) throw IoError(fmt::format("{}: no such group", p));
  hid_t g = PTRAIN_H5_CHECK(H5Gopen2(id_, rel.c_str(), H5P_DEFAULT), "cannot open group {}", p);
  return Group(g, p);
}

Dataset Location::create_dataset(const std::string& name, DType dtype,
                                 const std::vector<int64_t>& shape) {
  const std::string p = join_path(path_, name);
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Temp space(shape.empty()
                 ? PTRAIN_H5_CHECK(H5Screate(H5S_SCALAR), "cannot create a dataspace for {}", p)
                 : PTRAIN_H5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(),
                                                    nullptr),
                                   "cannot create a dataspace for {}", p),
             H5Sclose);
  hid_t d = PTRAIN_H5_CHECK(H5Dcreate2(id_, name.c_str(), file_type(dtype), space.id, H5P_DEFAULT,
                                       H5P_DEFAULT, H5P_DEFAULT),
                            "cannot create dataset {}", p);
  return Dataset(d, p);
}

Dataset Location::create_virtual_dataset(const std::string& name, DType dtype,
                                         const std::vector<int64_t>& shape,
                                         const std::vector<VirtualMapping>& mappings, double fill) {
  const std::string p = join_path(path_, name);
  if (shape.empty()) throw InternalError(fmt::format("{}: a virtual dataset needs a shape", p));
  const std::vector<hsize_t> dims(shape.begin(), shape.end());
  const int rank = static_cast<int>(dims.size());
  Temp space(PTRAIN_H5_CHECK(H5Screate_simple(rank, dims.data(), nullptr),
                             "cannot create a dataspace for {}", p),
             H5Sclose);
  Temp dcpl(PTRAIN_H5_CHECK(H5Pcreate(H5P_DATASET_CREATE), "cannot create {}", p), H5Pclose);
  const hid_t ftype = file_type(dtype);
  PTRAIN_H5_CHECK(H5Pset_fill_value(dcpl.id, H5T_NATIVE_DOUBLE, &fill),
                  "cannot set the fill value of {}", p);
  for (const VirtualMapping& m : mappings) {
    if (m.start.size() != dims.size() || m.count.size() != dims.size()) {
      throw InternalError(fmt::format("{}: a mapping from {}:{} has the wrong rank", p, m.file,
                                      m.dataset));
    }
    const std::vector<hsize_t> start(m.start.begin(), m.start.end());
    const std::vector<hsize_t> count(m.count.begin(), m.count.end());
    Temp vspace(PTRAIN_H5_CHECK(H5Scopy(space.id), "cannot create {}", p), H5Sclose);
    PTRAIN_H5_CHECK(H5Sselect_hyperslab(vspace.id, H5S_SELECT_SET, start.data(), nullptr,
                                        count.data(), nullptr),
                    "cannot select the block of {} read from {}:{}", p, m.file, m.dataset);
    Temp sspace(PTRAIN_H5_CHECK(H5Screate_simple(rank, count.data(), nullptr),
                                "cannot create {}", p),
                H5Sclose);
    PTRAIN_H5_CHECK(H5Pset_virtual(dcpl.id, vspace.id, m.file.c_str(), m.dataset.c_str(),
                                   sspace.id),
                    "cannot map {} to {}:{}", p, m.file, m.dataset);
  }
  hid_t d = PTRAIN_H5_CHECK(H5Dcreate2(id_, name.c_str(), ftype, space.id, H5P_DEFAULT, dcpl.id,
                                       H5P_DEFAULT),
                            "cannot create virtual dataset {}", p);
  return Dataset(d, p);
}

Dataset Location::open_dataset(const std::string& rel) const {
  const std::string p = join_path(path_, rel);
  if (kind(rel) != ObjectKind::kDataset) throw IoError(fmt::format("{}: no such dataset", p));
  hid_t d = PTRAIN_H5_CHECK(H5Dopen2(id_, rel.c_str(), H5P_DEFAULT), "cannot open dataset {}", p);
  return Dataset(d, p);
}

void Location::remove(const std::string& rel) {
  PTRAIN_H5_CHECK(H5Ldelete(id_, rel.c_str(), H5P_DEFAULT), "cannot remove {}",
                  join_path(path_, rel));
}

// ---- File ------------------------------------------------------------------------------------

namespace {
hid_t strong_close_fapl(const std::string& path) {
  hid_t fapl = PTRAIN_H5_CHECK(H5Pcreate(H5P_FILE_ACCESS), "cannot open {}", path);
  Temp guard(fapl, H5Pclose);
  PTRAIN_H5_CHECK(H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG), "cannot open {}", path);
  guard.id = -1;
  return fapl;
}
}  // namespace

File File::create(const std::string& path, uint64_t userblock_bytes) {
  Temp fapl(strong_close_fapl(path), H5Pclose);
  Temp fcpl(PTRAIN_H5_CHECK(H5Pcreate(H5P_FILE_CREATE), "cannot create HDF5 file {}", path),
            H5Pclose);
  if (userblock_bytes > 0) {
    PTRAIN_H5_CHECK(H5Pset_userblock(fcpl.id, userblock_bytes),
                    "cannot create HDF5 file {} with a {}-byte user block", path, userblock_bytes);
  }
  hid_t f = PTRAIN_H5_CHECK(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.id, fapl.id),
                            "cannot create HDF5 file {}", path);
  return File(f, path);
}

File File::open(const std::string& path, Access access) {
  Temp fapl(strong_close_fapl(path), H5Pclose);
  const unsigned flags = access == Access::kReadWrite ? H5F_ACC_RDWR : H5F_ACC_RDONLY;
  hid_t f = PTRAIN_H5_CHECK(H5Fopen(path.c_str(), flags, fapl.id), "cannot open HDF5 file {}",
                            path);
  return File(f, path);
}

void File::flush() {
  PTRAIN_H5_CHECK(H5Fflush(id_, H5F_SCOPE_GLOBAL), "cannot flush {}", file_);
}

bool has_hdf5_signature(const std::string& path) {
  static const unsigned char kSig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool found = false;
  for (const off_t at : {off_t{0}, off_t{512}}) {
    unsigned char buf[8] = {0};
    if (::pread(fd, buf, sizeof buf, at) == 8 && std::memcmp(buf, kSig, 8) == 0) found = true;
  }
  ::close(fd);
  return found;
}

void write_file_atomically(const std::string& path, const std::function<void(File&)>& fill,
                           const AtomicWriteOptions& options) {
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  try {
    const uint64_t swallowed_before = t_swallowed_closes;
    {
      File f = File::create(tmp, options.userblock_bytes);
      fill(f);
      f.close();
    }
    // An object of the file that failed to close (in a destructor, which cannot throw) may have
    // lost its data: the file is not renamed into place.
    if (t_swallowed_closes != swallowed_before) {
      throw IoError(fmt::format("not writing {}: {}", path, t_last_swallowed));
    }
    if (options.after_close) options.after_close(tmp);
    fsync_path(tmp);
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      throw IoError(fmt::format("cannot rename {} to {}: {}", tmp, path, std::strerror(errno)));
    }
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  fsync_path(parent.empty() ? "." : parent.string());
}

LibraryGuard::~LibraryGuard() {
  // After a failed close HDF5's own clean-up would crash (see g_close_failed); every file we
  // wrote has been closed and checked by then, so the OS reclaiming the rest loses nothing.
  if (!g_close_failed) H5close();
}

std::string library_version() {
  unsigned maj = 0, min = 0, rel = 0;
  H5get_libversion(&maj, &min, &rel);
  return fmt::format("{}.{}.{}", maj, min, rel);
}

}  // namespace ptrain::h5
