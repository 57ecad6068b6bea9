// Inputs that cannot be read are reported for what they are: a symlink loop given as --input (or
// met in a folder) is a symlink loop, not a broken symlink; a checkpoint file that cannot be read
// says why (the OS's reason), not "not an HDF5 file".
#include "common/data/corpus.hpp"
#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

using namespace ptrain;
namespace fs = std::filesystem;

namespace {

struct Dir {
  fs::path path;
  Dir() {
    path = fs::temp_directory_path() / ("ptrain-input-errors-" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~Dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

}  // namespace

TEST_CASE("input errors: a symlink loop is called a symlink loop") {
  Dir d;
  const fs::path a = d.path / "a", b = d.path / "b";
  fs::create_symlink(b, a);
  fs::create_symlink(a, b);
  CHECK_THROWS_WITH_AS(read_corpus({a.string()}, std::nullopt),
                       doctest::Contains("is a symlink loop"), IoError);
  // In a folder it is skipped, and the folder's real file still read.
  const fs::path folder = d.path / "corpus";
  fs::create_directories(folder);
  std::ofstream(folder / "doc.txt") << "hello\n";
  fs::create_symlink(folder / "loop2", folder / "loop1");
  fs::create_symlink(folder / "loop1", folder / "loop2");
  const Corpus c = read_corpus({folder.string()}, std::nullopt);
  CHECK(c.documents.size() == 1);
}

TEST_CASE("input errors: an unreadable checkpoint says why - not 'not an HDF5 file'") {
  Dir d;
  const fs::path missing = d.path / "step-1" / "checkpoint.h5";
  fs::create_directories(missing);  // a folder where the file should be: read() fails EISDIR
  try {
    (void)read_checkpoint_meta((d.path / "step-1").string());
    FAIL("read a folder as a checkpoint");
  } catch (const Error& e) {
    const std::string what = e.what();
    CAPTURE(what);
    CHECK(what.find("not an HDF5 file") == std::string::npos);
    CHECK(what.find("not a regular file") != std::string::npos);
  }
  // A file without read permission (only testable without root, which reads anything).
  if (::geteuid() != 0) {
    const fs::path locked = d.path / "locked.h5";
    std::ofstream(locked) << "x";
    fs::permissions(locked, fs::perms::none);
    try {
      (void)read_checkpoint_meta(locked.string());
      FAIL("read an unreadable checkpoint");
    } catch (const Error& e) {
      const std::string what = e.what();
      CAPTURE(what);
      CHECK(what.find("cannot read") != std::string::npos);
      CHECK(what.find("Permission denied") != std::string::npos);
    }
  }
}

