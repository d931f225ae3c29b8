#!/usr/bin/env bash
# Creates a TPM's endorsement key (EK) and storage root key (SRK) with the
# Azure IoT SDKs' templates, persists them where the SDKs look for them
# (EK 0x81010001, SRK 0x81000001) and exports their public areas as the
# SDKs send them: the marshaled TPM2B_PUBLIC (`tpm2_readpublic -f tss`).
#
#   tpm-keys.sh OUTDIR
#
# With TPM2TOOLS_TCTI set (e.g. swtpm:host=127.0.0.1,port=2321) it uses that
# TPM; without, it starts a throw-away swtpm of its own. It writes
# OUTDIR/ek.pub and OUTDIR/srk.pub (public keys only). The committed
# ek.pub/srk.pub beside this script were made with `./tpm-keys.sh .` and
# swtpm 0.7.1 / tpm2-tools 5.4 (Debian packages swtpm, swtpm-tools,
# tpm2-tools, libtss2-tcti-swtpm0).
#
# tpm2_createek is not used: its template has a 256-byte zero `unique`, the
# SDKs' templates an empty one, so the keys would differ from the SDKs'.
set -euo pipefail

out=${1:?usage: tpm-keys.sh OUTDIR}
mkdir -p "$out"
work=$(mktemp -d)
swtpm_pid=
cleanup() {
    if [ -n "$swtpm_pid" ]; then
        kill "$swtpm_pid" 2>/dev/null || true
        wait "$swtpm_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${TPM2TOOLS_TCTI:-}" ]; then
    port=$((20000 + RANDOM % 20000))
    mkdir "$work/state"
    swtpm socket --tpm2 --tpmstate dir="$work/state" \
        --server type=tcp,port=$port,bindaddr=127.0.0.1 \
        --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 \
        --flags not-need-init,startup-clear &
    swtpm_pid=$!
    export TPM2TOOLS_TCTI="swtpm:host=127.0.0.1,port=$port"
    for _ in $(seq 50); do
        tpm2_getcap properties-fixed >/dev/null 2>&1 && break
        sleep 0.1
    done
fi

# Without a resource manager every tool leaves its transient objects loaded:
# persist each key, then flush before the next step.
flush() { tpm2_flushcontext -t >/dev/null; }

# The standard EK policy: PolicySecret(TPM_RH_ENDORSEMENT).
printf '\x83\x71\x97\x67\x44\x84\xb3\xf8\x1a\x90\xcc\x8d\x46\xa5\xd7\x24\xfd\x52\xd7\x6e\x06\x52\x0b\x64\xf2\xa1\xda\x1b\x33\x14\x69\xaa' >"$work/ek-policy"

tpm2_evictcontrol -C o -c 0x81010001 >/dev/null 2>&1 || true
tpm2_createprimary -Q -C e -g sha256 -G rsa2048:null:aes128cfb -L "$work/ek-policy" \
    -a 'fixedtpm|fixedparent|sensitivedataorigin|adminwithpolicy|restricted|decrypt' \
    -c "$work/ek.ctx"
tpm2_evictcontrol -Q -C o -c "$work/ek.ctx" 0x81010001
flush

tpm2_evictcontrol -C o -c 0x81000001 >/dev/null 2>&1 || true
tpm2_createprimary -Q -C o -g sha256 -G rsa2048:null:aes128cfb \
    -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt' \
    -c "$work/srk.ctx"
tpm2_evictcontrol -Q -C o -c "$work/srk.ctx" 0x81000001
flush

tpm2_readpublic -Q -c 0x81010001 -f tss -o "$out/ek.pub"
tpm2_readpublic -Q -c 0x81000001 -f tss -o "$out/srk.pub"
