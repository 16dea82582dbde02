#!/bin/sh
# repair_selinux.sh - repair /etc/selinux/config on a copy of a Linux OS disk attached to a rescue VM,
# so that the VM stops freezing at boot with "Failed to load SELinux policy".
#
# Usage: repair_selinux.sh [--device DISK] [--incident ID] [--dry-run]
#   Azure Run Command passes parameters as environment variables instead: REPAIR_DEVICE,
#   REPAIR_INCIDENT, REPAIR_DRY_RUN (true/false). Command-line flags win.
#
# The config is judged the way libselinux reads it: the first "SELINUX=" line (at the start of a
# line) whose value begins, case-insensitively, with enforcing/permissive/disabled sets the mode;
# the last "SELINUXTYPE=" line sets the policy type ("targeted" when absent), and that type must
# have /etc/selinux/<type>/policy/policy.N. Only the offending lines are rewritten; the file is
# rewritten in place (same inode, same security.selinux label) after a backup config.bak-<incident>.
#
# The last line of stdout is one JSON object: status (repaired | already_valid | would_repair | failed),
# device, root (the partition or vg/lv mounted), root_via (partition | active | mapped), dry_run,
# incident, mode, policy_type, installed, changes [{key, old, new, reason}], backup, warnings, and
# error when failed. Exit 0 unless failed. would_repair is the dry-run outcome when changes are due.
# Requires: POSIX sh, awk, blkid, mount, losetup, partx (util-linux); lvm2 only for LVM disks.

set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 077

STATUS=failed
ERROR=""
DEVICE=""
ROOT_DEV=""
ROOT_VIA=""
BACKUP=""
CHANGES=""
WARNINGS=""
MODE_OUT=""
TYPE_OUT=""
INSTALLED_OUT=""
DRY_RUN=false
INCIDENT=""
# cleanup bookkeeping: what this script set up, and must take down
MNT=""
MNT_DIRS=""
LOOPS=""
PARTX_DISK=""
WORK=""

say() { printf 'repair-selinux: %s\n' "$*"; }

# JSON string: escape backslash, quote, tab; drop other control and non-ASCII bytes (output stays ASCII).
json_str() {
    printf '%s' "$1" | LC_ALL=C awk 'BEGIN { ORS = ""; printf "\"" } {
        if (NR > 1) printf "\\n"
        for (i = 1; i <= length($0); i++) {
            c = substr($0, i, 1)
            if (c == "\\") printf "\\\\"
            else if (c == "\"") printf "\\\""
            else if (c == "\t") printf "\\t"
            else if (c >= " " && c <= "~") printf "%s", c
            else printf "?"
        }
    } END { printf "\"" }'
}

json_or_null() { if [ -n "$1" ]; then json_str "$1"; else printf 'null'; fi; }

add_warning() {
    say "WARNING: $1"
    WARNINGS="${WARNINGS:+$WARNINGS,}$(json_str "$1")"
}

add_change() { # key old new reason
    CHANGES="${CHANGES:+$CHANGES,}{\"key\":$(json_str "$1"),\"old\":$(json_or_null "$2"),\"new\":$(json_str "$3"),\"reason\":$(json_str "$4")}"
    say "$1: '$2' -> '$3' ($4)"
}

fail() {
    ERROR=$1
    STATUS=failed
    exit 1
}

# The last line of a tool's error output, for error messages.
last_err() { [ -f "$WORK/err" ] && tail -n 1 "$WORK/err" | tr -d '\r' | cut -c1-200; }

cleanup() {
    if [ -n "$MNT" ]; then
        sync
        if ! umount "$MNT" 2>/dev/null; then
            sleep 1
            umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || add_warning "could not unmount $MNT"
        fi
        MNT=""
    fi
    for d in $MNT_DIRS; do rmdir "$d" 2>/dev/null; done
    MNT_DIRS=""
    for l in $LOOPS; do losetup -d "$l" 2>/dev/null || add_warning "could not detach $l"; done
    LOOPS=""
    if [ -n "$PARTX_DISK" ]; then
        partx -d "$PARTX_DISK" 2>/dev/null || add_warning "could not remove partition mappings of $PARTX_DISK"
        PARTX_DISK=""
    fi
    [ -n "$WORK" ] && rm -rf "$WORK"
    WORK=""
}

on_exit() {
    rc=$?
    trap - EXIT INT TERM
    cleanup
    if [ "$STATUS" = failed ] && [ -z "$ERROR" ]; then
        ERROR="stopped unexpectedly (exit code $rc)"
    fi
    printf '{"status":%s,"device":%s,"root":%s,"root_via":%s,"dry_run":%s,"incident":%s,"mode":%s,"policy_type":%s,"installed":[%s],"changes":[%s],"backup":%s,"warnings":[%s]' \
        "$(json_str "$STATUS")" "$(json_or_null "$DEVICE")" "$(json_or_null "$ROOT_DEV")" \
        "$(json_or_null "$ROOT_VIA")" "$DRY_RUN" \
        "$(json_or_null "$INCIDENT")" "$(json_or_null "$MODE_OUT")" "$(json_or_null "$TYPE_OUT")" \
        "$INSTALLED_OUT" "$CHANGES" "$(json_or_null "$BACKUP")" "$WARNINGS"
    [ "$STATUS" = failed ] && printf ',"error":%s' "$(json_str "$ERROR")"
    printf '}\n'
    [ "$STATUS" = failed ] && exit 1
    exit 0
}

trap on_exit EXIT
trap 'ERROR="interrupted"; exit 130' INT
trap 'ERROR="terminated"; exit 143' TERM

# ---------------------------------------------------------------- parameters

DEVICE_ARG=${REPAIR_DEVICE:-}
DRY_ARG=${REPAIR_DRY_RUN:-false}
INCIDENT_ARG=${REPAIR_INCIDENT:-}
while [ $# -gt 0 ]; do
    case $1 in
        --device) [ $# -ge 2 ] || fail "--device needs a value"; DEVICE_ARG=$2; shift 2 ;;
        --device=*) DEVICE_ARG=${1#--device=}; shift ;;
        --incident) [ $# -ge 2 ] || fail "--incident needs a value"; INCIDENT_ARG=$2; shift 2 ;;
        --incident=*) INCIDENT_ARG=${1#--incident=}; shift ;;
        --dry-run) DRY_ARG=true; shift ;;
        -h|--help) sed -n '2,17p' "$0"; STATUS=already_valid; trap - EXIT; exit 0 ;;
        *) fail "unknown argument '$1' (expected --device DISK, --incident ID, --dry-run)" ;;
    esac
done

case $(printf '%s' "$DRY_ARG" | tr 'A-Z' 'a-z') in
    true) DRY_RUN=true ;;
    false|"") DRY_RUN=false ;;
    *) fail "REPAIR_DRY_RUN must be true or false, got '$DRY_ARG'" ;;
esac
if [ -n "$INCIDENT_ARG" ]; then
    case $INCIDENT_ARG in
        *[!A-Za-z0-9-]*) fail "invalid incident id '$INCIDENT_ARG': use 1-64 letters, digits or '-'" ;;
    esac
    [ ${#INCIDENT_ARG} -le 64 ] || fail "invalid incident id: longer than 64 characters"
    INCIDENT=$INCIDENT_ARG
fi
[ "$(id -u)" = 0 ] || fail "must run as root"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/repair-selinux.XXXXXX") || fail "cannot create a temporary directory"
: > "$WORK/err"

# ---------------------------------------------------------------- which disk

# Whole-disk names (sysfs) that hold the filesystem mounted at $1, following partitions and dm slaves.
disks_under() {
    node=$(readlink -f "/sys/class/block/$1" 2>/dev/null) || return 0
    [ -n "$node" ] || return 0
    if [ -f "$node/partition" ]; then
        basename "$(dirname "$node")"
        return 0
    fi
    found=""
    for s in "$node"/slaves/*; do
        [ -e "$s" ] || continue
        found=1
        disks_under "$(basename "$s")"
    done
    [ -n "$found" ] || basename "$node"
}

disks_of_mount() {
    majmin=$(mountpoint -d "$1" 2>/dev/null) || return 0
    name=$(basename "$(readlink -f "/sys/dev/block/$majmin" 2>/dev/null)" 2>/dev/null) || return 0
    [ -n "$name" ] && [ -e "/sys/class/block/$name" ] && disks_under "$name"
}

# Whether a block device is mounted anywhere (by major:minor, whatever name it was mounted under).
in_use() {
    mm=$(cat "/sys/class/block/$(basename "$(readlink -f "$1")")/dev" 2>/dev/null) || return 1
    awk -v mm="$mm" '$3 == mm { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# Whether a whole disk (sysfs name) or any of its partitions is mounted.
disk_in_use() {
    in_use "/dev/$1" && return 0
    for q in "/sys/class/block/$1/$1"*; do
        [ -f "$q/partition" ] && in_use "/dev/$(basename "$q")" && return 0
    done
    return 1
}

ROOT_DISKS=$(disks_of_mount / | sort -u | tr '\n' ' ')

if [ -n "$DEVICE_ARG" ]; then
    case $DEVICE_ARG in /dev/*) ;; *) fail "--device must be a path under /dev, got '$DEVICE_ARG'" ;; esac
    [ -b "$DEVICE_ARG" ] || fail "device '$DEVICE_ARG' is not a block device"
    DEVICE=$DEVICE_ARG
elif [ -e /dev/disk/azure/scsi1/lun0 ]; then
    DEVICE=$(readlink -f /dev/disk/azure/scsi1/lun0)
    [ -b "$DEVICE" ] || fail "/dev/disk/azure/scsi1/lun0 does not lead to a block device"
else
    resource=""
    for r in /dev/disk/azure/resource /dev/disk/azure/scsi0/lun1; do
        [ -e "$r" ] && resource="$resource $(basename "$(readlink -f "$r")")"
    done
    candidates=""
    for b in /sys/block/*; do
        n=$(basename "$b")
        case $n in loop*|ram*|sr*|dm-*|md*|zram*|nbd*|fd*) continue ;; esac
        case " $ROOT_DISKS $resource " in *" $n "*) continue ;; esac
        disk_in_use "$n" && continue
        candidates="$candidates $n"
    done
    set -- $candidates
    [ $# -eq 1 ] || fail "cannot tell which disk is the OS disk copy (candidates:${candidates:- none}); pass --device"
    DEVICE=/dev/$1
fi

DISK_NAME=$(basename "$(readlink -f "$DEVICE")")
[ -e "/sys/class/block/$DISK_NAME" ] || fail "device '$DEVICE' is not known to the kernel"
if [ -f "/sys/class/block/$DISK_NAME/partition" ]; then
    fail "'$DEVICE' is a partition; pass the whole disk"
fi
case " $ROOT_DISKS " in
    *" $DISK_NAME "*) fail "refusing '$DEVICE': it holds this rescue VM's own root filesystem" ;;
esac
say "disk $DEVICE${INCIDENT:+ (incident $INCIDENT)}"
[ "$DRY_RUN" = true ] && say "dry run: nothing will be changed"

# ---------------------------------------------------------------- partitions and volumes

list_parts() {
    for p in "/sys/class/block/$DISK_NAME/$DISK_NAME"*; do
        [ -f "$p/partition" ] && printf '/dev/%s\n' "$(basename "$p")"
    done
}

PARTS=$(list_parts)
if [ -z "$PARTS" ] && [ -n "$(blkid -p -o value -s PTTYPE "$DEVICE" 2>/dev/null)" ]; then
    say "partitions of $DEVICE are not visible: adding them with partx"
    partx -a "$DEVICE" 2>"$WORK/err" || fail "partx -a $DEVICE failed: $(last_err)"
    PARTX_DISK=$DEVICE
    PARTS=$(list_parts)
fi
[ -n "$PARTS" ] || PARTS=$DEVICE
for p in $PARTS; do
    i=0
    while [ ! -b "$p" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    [ -b "$p" ] || fail "partition device $p did not appear"
    in_use "$p" && fail "$p is mounted already; unmount it first"
done

lvm_cfg() { printf 'devices { filter=["a|^%s$|","r|.*|"] use_devicesfile=0 } backup { backup=0 archive=0 }' "$1"; }

# For each LVM physical volume, print the block devices of its logical volumes ("dev name" lines).
# An LV already active (e.g. activated by the rescue VM's initramfs) is used as it is; otherwise a
# linear LV is mapped read-only or read-write through a loop device at its offset, so the volume
# group is neither activated nor renamed - no clash with a rescue VM whose own VG has the same name.
lvm_volumes() {
    pv=$1
    command -v lvs >/dev/null 2>&1 || { add_warning "$pv is an LVM physical volume but lvm2 is not installed"; return 0; }
    cfg=$(lvm_cfg "$pv")
    vg_uuid=$(pvs --config "$cfg" --noheadings -o vg_uuid "$pv" 2>>"$WORK/err" | tr -d ' -')
    pe_start=$(pvs --config "$cfg" --noheadings --units b --nosuffix -o pe_start "$pv" 2>>"$WORK/err" | tr -d ' ')
    extent=$(vgs --config "$cfg" --noheadings --units b --nosuffix -o vg_extent_size 2>>"$WORK/err" | tr -d ' ')
    [ -n "$pe_start" ] && [ -n "$extent" ] || { add_warning "cannot read the LVM metadata on $pv: $(last_err)"; return 0; }
    lvs --config "$cfg" --noheadings --segments -o vg_name,lv_name,lv_uuid,seg_count,segtype,seg_pe_ranges \
        2>>"$WORK/err" > "$WORK/lvs"
    while read -r vg lv lv_uuid segs segtype ranges; do
        [ -n "$lv" ] || continue
        dm_uuid="LVM-$vg_uuid$(printf '%s' "$lv_uuid" | tr -d '-')"
        active=""
        for h in "/sys/class/block/$(basename "$pv")/holders/"*; do
            [ -f "$h/dm/uuid" ] && [ "$(cat "$h/dm/uuid")" = "$dm_uuid" ] && active=/dev/$(basename "$h")
        done
        if [ -n "$active" ]; then
            if in_use "$active"; then
                add_warning "skipping $vg/$lv: it is active and mounted on this VM"
                continue
            fi
            printf '%s %s/%s active\n' "$active" "$vg" "$lv"
            continue
        fi
        if [ "$segs" != 1 ] || [ "$segtype" != linear ]; then
            add_warning "skipping $vg/$lv: $segs segment(s) of type $segtype cannot be mapped without activating the VG"
            continue
        fi
        first=${ranges##*:}
        last=${first#*-}
        first=${first%-*}
        offset=$((pe_start + first * extent))
        size=$(((last - first + 1) * extent))
        ro=""
        [ "$DRY_RUN" = true ] && ro="-r"
        loop=$(losetup -f --show $ro -o "$offset" --sizelimit "$size" "$pv" 2>>"$WORK/err") || {
            add_warning "cannot map $vg/$lv: $(last_err)"
            continue
        }
        LOOPS="$LOOPS $loop"
        printf '%s %s/%s mapped\n' "$loop" "$vg" "$lv"
    done < "$WORK/lvs"
}

: > "$WORK/candidates"
for p in $PARTS; do
    kind=$(blkid -p -o value -s TYPE "$p" 2>/dev/null)
    case $kind in
        ext2|ext3|ext4|xfs) printf '%s %s partition\n' "$p" "$p" >> "$WORK/candidates" ;;
        LVM2_member) lvm_volumes "$p" >> "$WORK/candidates" ;;
    esac
done
[ -s "$WORK/candidates" ] || fail "no ext4, XFS or LVM filesystem found on $DEVICE"

mount_fs() { # dev dir
    kind=$(blkid -p -o value -s TYPE "$1" 2>/dev/null)
    case $kind in
        xfs) opts=nouuid; [ "$DRY_RUN" = true ] && opts=ro,nouuid,norecovery ;;
        ext2|ext3|ext4) opts=rw; [ "$DRY_RUN" = true ] && opts=ro,noload ;;
        *) return 1 ;;
    esac
    mount -t "$kind" -o "$opts" "$1" "$2" 2>>"$WORK/err"
}

CFG_REL=etc/selinux/config
while read -r dev name via; do
    dir=$(mktemp -d "${TMPDIR:-/tmp}/repair-selinux-mnt.XXXXXX") || fail "cannot create a mount point"
    MNT_DIRS="$MNT_DIRS $dir"
    if ! mount_fs "$dev" "$dir"; then
        add_warning "cannot mount $name: $(last_err)"
        continue
    fi
    MNT=$dir
    if [ -f "$dir/$CFG_REL" ] || [ -L "$dir/$CFG_REL" ]; then
        ROOT_DEV=$name
        ROOT_VIA=$via
        break
    fi
    umount "$dir" 2>>"$WORK/err" || fail "cannot unmount $name: $(last_err)"
    MNT=""
done < "$WORK/candidates"
[ -n "$MNT" ] || fail "no filesystem on $DEVICE holds /$CFG_REL"
case $ROOT_VIA in
    active) say "root filesystem $ROOT_DEV (its volume group was active already; left active) holds /$CFG_REL" ;;
    mapped) say "root filesystem $ROOT_DEV (mapped by offset; the volume group stays inactive) holds /$CFG_REL" ;;
    *) say "root filesystem $ROOT_DEV holds /$CFG_REL" ;;
esac
CFG=$MNT/$CFG_REL
[ -L "$CFG" ] && fail "/$CFG_REL is a symbolic link; refusing to follow it on a foreign disk"

# ---------------------------------------------------------------- judge the config

INSTALLED=""
for d in "$MNT"/etc/selinux/*/; do
    [ -d "$d" ] || continue
    for f in "$d"policy/policy.[0-9]*; do
        if [ -f "$f" ]; then
            INSTALLED="$INSTALLED $(basename "$d")"
            INSTALLED_OUT="${INSTALLED_OUT:+$INSTALLED_OUT,}$(json_str "$(basename "$d")")"
            break
        fi
    done
done

# Prints key=value facts about the config, as libselinux reads it, plus typo candidates.
LC_ALL=C awk '
function trim(s) { sub(/^[ \t\r\n\v\f]+/, "", s); sub(/[ \t\r\n\v\f]+$/, "", s); return s }
{
    line = $0
    if (!mode_line && substr(line, 1, 8) == "SELINUX=") {
        v = substr(line, 9); sub(/^[ \t\r\n\v\f]+/, "", v); lv = tolower(v)
        if (substr(lv, 1, 9) == "enforcing") { mode = "enforcing"; mode_line = NR }
        else if (substr(lv, 1, 10) == "permissive") { mode = "permissive"; mode_line = NR }
        else if (substr(lv, 1, 8) == "disabled") { mode = "disabled"; mode_line = NR }
    }
    s = line; sub(/^[ \t\r\n\v\f]+/, "", s)
    if (substr(s, 1, 1) == "#" || s == "") next
    if (tolower(substr(s, 1, 12)) == "selinuxtype=") { type = trim(substr(s, 13)); type_line = NR; next }
    if (!cand_line && match(tolower(s), /^selinux[ \t]*=/)) { cand_line = NR; cand = trim(substr(s, RLENGTH + 1)) }
}
END {
    printf "MODE=%s\nMODE_LINE=%d\nTYPE_LINE=%d\nCAND_LINE=%d\n", mode, mode_line, type_line, cand_line
    printf "TYPE=%s\nCAND=%s\nLINES=%d\n", type, cand, NR
}' "$CFG" > "$WORK/facts" || fail "cannot read /$CFG_REL"

MODE=""; MODE_LINE=0; TYPE=""; TYPE_LINE=0; CAND=""; CAND_LINE=0; LINES=0
while IFS= read -r fact; do
    case $fact in
        MODE=*) MODE=${fact#MODE=} ;;
        MODE_LINE=*) MODE_LINE=${fact#MODE_LINE=} ;;
        TYPE=*) TYPE=${fact#TYPE=} ;;
        TYPE_LINE=*) TYPE_LINE=${fact#TYPE_LINE=} ;;
        CAND=*) CAND=${fact#CAND=} ;;
        CAND_LINE=*) CAND_LINE=${fact#CAND_LINE=} ;;
        LINES=*) LINES=${fact#LINES=} ;;
    esac
done < "$WORK/facts"

# Levenshtein distance between two short lowercase words.
distance() {
    A=$1 B=$2 LC_ALL=C awk 'BEGIN {
        a = ENVIRON["A"]; b = ENVIRON["B"]
        n = length(a); m = length(b)
        for (j = 0; j <= m; j++) d[0, j] = j
        for (i = 1; i <= n; i++) {
            d[i, 0] = i
            for (j = 1; j <= m; j++) {
                c = (substr(a, i, 1) == substr(b, j, 1)) ? 0 : 1
                x = d[i-1, j] + 1; y = d[i, j-1] + 1; z = d[i-1, j-1] + c
                d[i, j] = (x < y ? (x < z ? x : z) : (y < z ? y : z))
            }
        }
        print d[n, m]
    }'
}

# The one word of $2.. within edit distance 2 of $1 (and clearly closer than to any other), if any.
closest() {
    word=$1; shift
    best=""; best_d=99; ties=0
    for w in "$@"; do
        dist=$(distance "$word" "$w")
        if [ "$dist" -lt "$best_d" ]; then best=$w; best_d=$dist; ties=0
        elif [ "$dist" -eq "$best_d" ]; then ties=1
        fi
    done
    if [ "$best_d" -le 2 ] && [ "$ties" = 0 ] && [ ${#word} -ge 4 ]; then printf '%s' "$best"; fi
}

NEW_MODE_LINE=0; NEW_MODE=""; NEW_TYPE=""; APPEND_TYPE=""

if [ -z "$MODE" ]; then
    if [ "$CAND_LINE" -gt 0 ]; then
        lc=$(printf '%s' "$CAND" | tr -d "\"'" | tr 'A-Z' 'a-z')
        guess=$(closest "$lc" enforcing permissive disabled)
        if [ -n "$guess" ]; then
            NEW_MODE_LINE=$CAND_LINE; NEW_MODE=$guess
            add_change SELINUX "$CAND" "$guess" "libselinux does not recognise the mode '$CAND'; '$guess' was clearly meant"
            MODE=$guess
        else
            add_warning "SELINUX mode '$CAND' is not recognised by libselinux and its intent is unclear; left unchanged"
            MODE=unrecognised
        fi
    else
        add_warning "no SELINUX= mode line: libselinux treats the mode as not enforcing; left unchanged"
        MODE=absent
    fi
fi

EFFECTIVE_TYPE=${TYPE:-targeted}
case " $INSTALLED " in
    *" $EFFECTIVE_TYPE "*) TYPE_OK=1 ;;
    *) TYPE_OK=0 ;;
esac
if [ "$TYPE_OK" = 0 ] && [ "$MODE" != disabled ]; then
    if [ -z "$INSTALLED" ]; then
        if [ "$MODE" = enforcing ]; then
            line=$MODE_LINE; [ "$NEW_MODE_LINE" -gt 0 ] && line=$NEW_MODE_LINE
            NEW_MODE_LINE=$line; NEW_MODE=permissive
            add_change SELINUX enforcing permissive "no SELinux policy is installed, so an enforcing boot cannot load one"
            add_warning "SECURITY LOWERED: SELinux set to permissive because no policy is installed under /etc/selinux; install a policy and relabel to restore enforcing mode"
            MODE=permissive
        else
            add_warning "no SELinux policy is installed under /etc/selinux"
        fi
    else
        # shellcheck disable=SC2086
        typo=$(closest "$(printf '%s' "$EFFECTIVE_TYPE" | tr 'A-Z' 'a-z')" $INSTALLED)
        if [ -n "$typo" ]; then
            NEW_TYPE=$typo
            why="policy '$EFFECTIVE_TYPE' is not installed; '$typo' is the installed policy it misspells"
        else
            for preferred in targeted default; do
                case " $INSTALLED " in *" $preferred "*) NEW_TYPE=$preferred; break ;; esac
            done
            # shellcheck disable=SC2086
            [ -n "$NEW_TYPE" ] || { set -- $INSTALLED; NEW_TYPE=$1; }
            why="policy '$EFFECTIVE_TYPE' is not installed (no /etc/selinux/$EFFECTIVE_TYPE/policy/policy.N); '$NEW_TYPE' is installed"
        fi
        [ "$TYPE_LINE" -gt 0 ] || APPEND_TYPE=1
        add_change SELINUXTYPE "$TYPE" "$NEW_TYPE" "$why"
        EFFECTIVE_TYPE=$NEW_TYPE
    fi
fi
MODE_OUT=$MODE
TYPE_OUT=$EFFECTIVE_TYPE

if command -v getfattr >/dev/null 2>&1; then
    if ! getfattr --absolute-names -n security.selinux "$CFG" >/dev/null 2>&1; then
        add_warning "/$CFG_REL has no security.selinux label; an enforcing boot may still fail until the filesystem is relabelled"
    fi
fi

if [ -z "$CHANGES" ]; then
    STATUS=already_valid
    say "config is valid (mode $MODE_OUT, policy $TYPE_OUT); nothing to do"
    exit 0
fi
if [ "$DRY_RUN" = true ]; then
    STATUS=would_repair
    exit 0
fi

# ---------------------------------------------------------------- edit in place

NEW=$WORK/config.new
NOFINALNL=0
[ -s "$CFG" ] && [ -n "$(tail -c 1 "$CFG")" ] && NOFINALNL=1
LC_ALL=C NEW_MODE_LINE=$NEW_MODE_LINE NEW_MODE=$NEW_MODE TYPE_LINE=$TYPE_LINE NEW_TYPE=$NEW_TYPE \
APPEND_TYPE=$APPEND_TYPE NOFINALNL=$NOFINALNL LINES=$LINES awk '
{
    line = $0
    cr = (substr(line, length(line), 1) == "\r") ? "\r" : ""
    if (NR == ENVIRON["NEW_MODE_LINE"] + 0) line = "SELINUX=" ENVIRON["NEW_MODE"] cr
    if (NR == ENVIRON["TYPE_LINE"] + 0 && ENVIRON["NEW_TYPE"] != "") line = "SELINUXTYPE=" ENVIRON["NEW_TYPE"] cr
    if (NR == ENVIRON["LINES"] + 0 && ENVIRON["NOFINALNL"] == "1" && ENVIRON["APPEND_TYPE"] != "1") printf "%s", line
    else printf "%s\n", line
}
END { if (ENVIRON["APPEND_TYPE"] == "1") printf "SELINUXTYPE=%s\n", ENVIRON["NEW_TYPE"] }' "$CFG" > "$NEW" \
    || fail "cannot prepare the new config"

BACKUP=/etc/selinux/config.bak-${INCIDENT:-$(date -u +%Y%m%dT%H%M%SZ)}
if [ -e "$MNT$BACKUP" ]; then
    say "backup $BACKUP exists already (an earlier run); keeping it"
else
    cp --preserve=mode,ownership,timestamps,xattr "$CFG" "$MNT$BACKUP.tmp" 2>/dev/null \
        || cp -p "$CFG" "$MNT$BACKUP.tmp" 2>"$WORK/err" || fail "cannot write the backup: $(last_err)"
    sync
    mv "$MNT$BACKUP.tmp" "$MNT$BACKUP" || fail "cannot write the backup"
fi
# truncate and rewrite the same inode: its owner, mode and security.selinux label stay as they are
cat "$NEW" > "$CFG" 2>"$WORK/err" || fail "cannot rewrite /$CFG_REL: $(last_err) (the backup is at $BACKUP)"
sync
cmp -s "$NEW" "$CFG" || fail "/$CFG_REL does not read back as written (the backup is at $BACKUP)"
STATUS=repaired
say "repaired /$CFG_REL (backup $BACKUP)"
exit 0
