# Sourced by check-aarch64.sh and arm-estimate.sh: an emulated 64-bit ARM machine
# (qemu-system-aarch64, "virt" board, by default a Cortex-A72 with 2 cores) that boots Debian's arm64 kernel straight into an
# initramfs holding busybox, Debian 11's glibc 2.31 (the floor the binary is built for) and
# whatever the check puts there.
#
# Why full-system emulation and not qemu-user: on these machines qemu-user hangs as soon
# as a program starts a thread (a 5-line C pthread_create + join does, under qemu 7.2 and
# 10.0), and libtest, tract and iscamd all use threads. Under qemu-system the guest kernel
# schedules the threads itself.

VM_DIR=${VM_DIR:-target/cross/vm}

# Installs qemu-system-aarch64 and fetches the arm64 kernel, its vivid module (the kernel's
# virtual V4L2 camera) with the modules it needs, and busybox (Debian packages, extracted
# into $VM_DIR, not installed), unless they are there.
vm_install() {
  mkdir -p "$VM_DIR"
  if ! command -v qemu-system-aarch64 >/dev/null; then
    echo "installing: qemu-system-arm"
    # Debian 12 images may carry qemu-utils from bookworm-backports, which breaks
    # bookworm's qemu-system-common: take both from backports.
    if ! grep -rqs bookworm-backports /etc/apt/sources.list.d /etc/apt/sources.list; then
      echo "deb http://deb.debian.org/debian bookworm-backports main" >/etc/apt/sources.list.d/bookworm-backports.list
      apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      -t bookworm-backports qemu-system-arm >/dev/null
  fi
  if [ ! -s "$VM_DIR/vmlinuz" ] || [ ! -x "$VM_DIR/busybox" ] || [ ! -s "$VM_DIR/modules/order" ]; then
    dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64; apt-get update -qq; }
    local debs
    debs=$(mktemp -d)
    local kernel
    # The meta-package names the versioned kernel package it depends on.
    kernel=$(apt-cache depends linux-image-arm64:arm64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    (cd "$debs" && apt-get download -q "$kernel" busybox-static:arm64 2>/dev/null)
    dpkg-deb -x "$debs"/linux-image-*.deb "$debs/kernel"
    dpkg-deb -x "$debs"/busybox-static_*.deb "$debs/busybox"
    cp "$debs"/kernel/boot/vmlinuz-* "$VM_DIR/vmlinuz"
    cp "$debs/busybox/bin/busybox" "$VM_DIR/busybox"
    vm_copy_modules "$debs/kernel" vivid
    rm -rf "$debs"
  fi
  command -v cpio >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cpio >/dev/null
}

# vm_copy_modules TREE MODULE: copies MODULE.ko and the modules it depends on from the
# unpacked kernel package TREE into $VM_DIR/modules, with `order`: the order to load them.
vm_copy_modules() {
  local tree=$1 order="" seen=" "
  mkdir -p "$VM_DIR/modules"
  _vm_module() {
    local file dep
    case "$seen" in *" $1 "*) return ;; esac
    seen="$seen$1 "
    file=$(find "$tree"/lib/modules -name "$1.ko" | head -1)
    [ -n "$file" ] || { echo "vm_copy_modules: no $1.ko in the kernel package" >&2; return 1; }
    for dep in $(strings -a "$file" | sed -n 's/^depends=//p' | tr ',' ' '); do _vm_module "$dep"; done
    cp "$file" "$VM_DIR/modules/"
    order="$order $1"
  }
  _vm_module "$2"
  echo "$order" >"$VM_DIR/modules/order"
}

# vm_add_libs ROOT FILE...: copies the shared libraries FILE... need (their NEEDED
# closure) from the Debian 11 sysroot (cross/env.sh) into ROOT/lib.
vm_add_libs() {
  local root=$1; shift
  mkdir -p "$root/lib"
  local todo=("$@") seen=" " file lib dir found
  while [ ${#todo[@]} -gt 0 ]; do
    file=${todo[0]}; todo=("${todo[@]:1}")
    for lib in $(aarch64-linux-gnu-readelf -d "$file" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      case "$seen" in *" $lib "*) continue ;; esac
      seen="$seen$lib "
      found=""
      for dir in "$CROSS_SYSROOT/lib/aarch64-linux-gnu" "$CROSS_SYSROOT/usr/lib/aarch64-linux-gnu"; do
        [ -e "$dir/$lib" ] && { found=$dir/$lib; break; }
      done
      [ -n "$found" ] || { echo "vm_add_libs: $lib (needed by $file) not found" >&2; return 1; }
      cp -L "$found" "$root/lib/$lib"
      todo+=("$found")
    done
  done
}

# vm_run ROOT LOG TIMEOUT: packs the directory ROOT (with an executable /init) with busybox
# and the sysroot's glibc 2.31 into an initramfs, boots it and writes the console to LOG.
vm_run() {
  local root=$1 log=$2 limit=$3
  mkdir -p "$root"/{bin,lib,proc,sys,dev,tmp}
  cp "$VM_DIR/busybox" "$root/bin/busybox"
  local glibc=$CROSS_SYSROOT/lib/aarch64-linux-gnu lib
  for lib in ld-linux-aarch64.so.1 libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 libresolv.so.2 libgcc_s.so.1; do
    cp -L "$glibc/$lib" "$root/lib/"
  done
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$root.cpio.gz"
  # VM_CPU, VM_SMP and VM_QEMU_ARGS (say, -icount) change the machine.
  # shellcheck disable=SC2086
  timeout "$limit" qemu-system-aarch64 -M virt -cpu "${VM_CPU:-cortex-a72}" -smp "${VM_SMP:-2}" -m 3072 \
    -nographic -no-reboot -nic none ${VM_QEMU_ARGS:-} \
    -kernel "$VM_DIR/vmlinuz" -initrd "$root.cpio.gz" \
    -append "console=ttyAMA0 rdinit=/init quiet" >"$log" 2>&1
}
