# CMake toolchain for cross-building llama.cpp for aarch64 Linux on an x86 host with
# clang-19 (bench-scripts/setup-llama.sh --aarch64 uses a copy of it). Debian's cross
# packages provide the target's libc, libstdc++ and linker (gcc-aarch64-linux-gnu,
# libc6-dev-arm64-cross, libstdc++-12-dev-arm64-cross); clang finds them through the
# aarch64 GCC installation. No CMAKE_SYSROOT: with it, crtbegin and libgcc are not found.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER clang-19)
set(CMAKE_CXX_COMPILER clang++-19)
set(CMAKE_C_COMPILER_TARGET aarch64-linux-gnu)
set(CMAKE_CXX_COMPILER_TARGET aarch64-linux-gnu)

# Libraries, headers and packages of the target only; build tools (git, python) from the host.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# try_run and ctest run target programs under the qemu-aarch64 of setup-qemu.sh.
if(DEFINED ENV{SMEPILOT_QEMU} AND NOT "$ENV{SMEPILOT_QEMU}" STREQUAL "")
    set(_smepilot_qemu "$ENV{SMEPILOT_QEMU}")
elseif(DEFINED ENV{SMEPILOT_CACHE} AND NOT "$ENV{SMEPILOT_CACHE}" STREQUAL "")
    set(_smepilot_qemu "$ENV{SMEPILOT_CACHE}/qemu/root/usr/bin/qemu-aarch64")
else()
    set(_smepilot_qemu "$ENV{HOME}/.cache/smepilot/qemu/root/usr/bin/qemu-aarch64")
endif()
set(CMAKE_CROSSCOMPILING_EMULATOR "${_smepilot_qemu};-cpu;max;-L;/usr/aarch64-linux-gnu")
