# The include rules that keep the architecture visible in the folders, checked by scanning every
# `#include "..."` of the sources under SOURCE_DIR:
#   common/       includes only common/            (no role, no launcher)
#   status/       common/, status/
#   worker/       common/, worker/                 (never another role)
#   paramserver/  common/, paramserver/
#   coordinator/  common/, coordinator/, status/   (it fills the status model)
#   launch/       any role, status/, common/       (the composition root)
#   bench/        anything but cli/
#   cli/          anything
# "ptrain/..." (the generated build configuration header) is allowed everywhere.
# Usage: cmake -DSOURCE_DIR=<tree> -P check_includes.cmake   (fails listing every violation)
if(NOT SOURCE_DIR)
  message(FATAL_ERROR "check_includes: pass -DSOURCE_DIR=<source tree>")
endif()

set(ALLOWED_common      common)
set(ALLOWED_status      common status)
set(ALLOWED_worker      common worker)
set(ALLOWED_paramserver common paramserver)
set(ALLOWED_coordinator common coordinator status)
set(ALLOWED_launch      common coordinator worker paramserver status launch)
set(ALLOWED_bench       common coordinator worker paramserver status launch bench)
set(ALLOWED_cli         common coordinator worker paramserver status launch bench cli)
set(FOLDERS common status worker paramserver coordinator launch bench cli)

set(violations "")
set(scanned 0)
foreach(folder ${FOLDERS})
  file(GLOB_RECURSE sources ${SOURCE_DIR}/${folder}/*.cpp ${SOURCE_DIR}/${folder}/*.hpp
       ${SOURCE_DIR}/${folder}/*.cu ${SOURCE_DIR}/${folder}/*.cuh)
  foreach(src ${sources})
    math(EXPR scanned "${scanned} + 1")
    file(STRINGS ${src} lines REGEX "^[ \t]*#[ \t]*include[ \t]*\"")
    foreach(line ${lines})
      string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*\"([^\"]*)\".*" "\\1" inc "${line}")
      if(inc MATCHES "^ptrain/")
        continue()
      endif()
      string(REGEX MATCH "^[^/]+" top "${inc}")
      if(NOT inc MATCHES "/")
        set(top "")  # a bare name: same-folder include, refused below (say the folder)
      endif()
      list(FIND ALLOWED_${folder} "${top}" ok)
      if(ok EQUAL -1)
        file(RELATIVE_PATH rel ${SOURCE_DIR} ${src})
        string(APPEND violations "  ${rel}: #include \"${inc}\" (${folder}/ may include only: ${ALLOWED_${folder}})\n")
      endif()
    endforeach()
  endforeach()
endforeach()

if(scanned EQUAL 0)
  message(FATAL_ERROR "check_includes: no source file found under ${SOURCE_DIR}")
endif()
if(violations)
  message(FATAL_ERROR "include rules broken:\n${violations}")
endif()
message(STATUS "include rules hold (${scanned} files scanned)")
