#!/usr/bin/env bash
# A headless virtual sound card for tests and demos (DESIGN.md section 5).
#
#   scripts/vsound.sh start [DIR] [--echo DELAY_MS VOLUME]  start the rig (idempotent)
#   scripts/vsound.sh stop [DIR]                            stop only the processes it started
#   scripts/vsound.sh env [DIR]                             print export lines: eval "$(scripts/vsound.sh env)"
#   scripts/vsound.sh status [DIR]                          show daemon, sinks, sources, keepalives
#   scripts/vsound.sh echo on DELAY_MS VOLUME [DIR]         speaker monitor -> mic, like desktop speakers
#   scripts/vsound.sh echo room DELAY_MS VOLUME [DIR]       the same plus three decaying reflections (a room)
#   scripts/vsound.sh echo off [DIR]
#   scripts/vsound.sh mic-rate RATE [DIR]                   re-create the virtual mic at RATE Hz (e.g. 48000)
#   scripts/vsound.sh speaker-rate RATE [DIR]               re-create the virtual speaker at RATE Hz
#   scripts/vsound.sh unplug mic|speaker [DIR]              remove the device, killing its streams (like USB)
#   scripts/vsound.sh plug mic|speaker [DIR]                bring it back under the same name
#
# DIR defaults to $VSOUND_DIR or /tmp/voicecli-vsound. Everything (socket, cookie, state, PIDs) lives
# in DIR; nothing touches the home directory.
#
# Devices (PulseAudio names / ALSA pcm names that PortAudio lists):
#   vspeaker             virtual speaker (default sink)       ALSA: voicecli_speaker
#   vmic                 virtual microphone (default source)  ALSA: voicecli_mic
#   vmic_feed            feed the mic:   paplay -d vmic_feed file.wav
#   vspeaker.monitor     record the speaker:  parec -d vspeaker.monitor
# The ALSA "default" and "pulse" devices also reach the rig (default sink / source).
set -euo pipefail

SPEAKER_RATE_DEFAULT=${VSOUND_SPEAKER_RATE:-44100}
MIC_RATE_DEFAULT=${VSOUND_MIC_RATE:-16000}

die() { echo "vsound: $*" >&2; exit 1; }

# Parse "[DIR]" that may appear after the verb's own arguments.
DIR_ARG=""
set_dir() {
    DIR=${DIR_ARG:-${VSOUND_DIR:-/tmp/voicecli-vsound}}
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
}

client_env() {
    export PULSE_SERVER="unix:$DIR/native"
    export PULSE_COOKIE="$DIR/cookie"
    export PULSE_CLIENTCONFIG="$DIR/client.conf"
    export XDG_RUNTIME_DIR="$DIR/run"
    export ALSA_CONFIG_PATH="$DIR/asound.conf"
}

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

daemon_pid() { cat "$DIR/pids/daemon" 2>/dev/null || true; }

running() { alive "$(daemon_pid)" && (client_env; pactl info >/dev/null 2>&1); }

write_configs() {
    mkdir -p "$DIR/run" "$DIR/state" "$DIR/home/.config/pulse" "$DIR/pids" "$DIR/log"
    chmod 700 "$DIR/run"
    printf 'autospawn = no\n' >"$DIR/client.conf"
    # Server-side defaults: s16 so a round trip at matching rates is bit exact; no realtime scheduling.
    cat >"$DIR/home/.config/pulse/daemon.conf" <<EOF
default-sample-format = s16le
default-sample-rate = $SPEAKER_RATE_DEFAULT
alternate-sample-rate = $SPEAKER_RATE_DEFAULT
default-sample-channels = 1
resample-method = soxr-hq
realtime-scheduling = no
high-priority = no
flat-volumes = no
EOF
    cat >"$DIR/default.pa" <<EOF
load-module module-native-protocol-unix auth-anonymous=1 socket=$DIR/native
load-module module-cli-protocol-unix socket=$DIR/cli
load-module module-null-sink sink_name=vspeaker rate=$SPEAKER_RATE_DEFAULT channels=1 sink_properties=device.description=voicecli-speaker
load-module module-null-sink sink_name=vmic_feed rate=$MIC_RATE_DEFAULT channels=1 sink_properties=device.description=voicecli-mic-feed
load-module module-remap-source source_name=vmic master=vmic_feed.monitor rate=$MIC_RATE_DEFAULT channels=1 source_properties=device.description=voicecli-mic
set-default-sink vspeaker
set-default-source vmic
EOF
    # ALSA pcm devices with recognisable names, so PortAudio lists the virtual mic and speaker.
    cat >"$DIR/asound.conf" <<EOF
</usr/share/alsa/alsa.conf>
# asym: the mic is capture-only and the speaker playback-only, as real hardware would be.
pcm.voicecli_mic {
    type asym
    capture.pcm { type pulse device "vmic" }
    hint { show on description "voicecli virtual mic" }
}
pcm.voicecli_speaker {
    type asym
    playback.pcm { type pulse device "vspeaker" }
    hint { show on description "voicecli virtual speaker" }
}
EOF
}

start_keepalive() { # name device: a low-latency reader so the null sink renders in small blocks
    local name=$1 dev=$2
    alive "$(cat "$DIR/pids/keepalive-$name" 2>/dev/null || true)" && return 0
    (client_env; exec setsid parec -d "$dev" --latency-msec=50 --rate=16000 --channels=1 >/dev/null 2>>"$DIR/log/keepalive.log") &
    echo $! >"$DIR/pids/keepalive-$name"
}

stop_pidfile() {
    local f=$1 pid
    pid=$(cat "$f" 2>/dev/null || true)
    if alive "$pid"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do alive "$pid" || break; sleep 0.05; done
        alive "$pid" && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

kick() { # suspend/resume so the sinks drop the 2 s idle rendering blocks
    client_env
    for s in vspeaker vmic_feed; do
        pactl suspend-sink "$s" 1 >/dev/null 2>&1 || true
        pactl suspend-sink "$s" 0 >/dev/null 2>&1 || true
    done
}

cmd_start() {
    if running; then
        echo "vsound: already running in $DIR (daemon pid $(daemon_pid))"
    else
        command -v pulseaudio >/dev/null || die "pulseaudio not found; install: apt-get install --no-install-recommends pulseaudio pulseaudio-utils libasound2-plugins libportaudio2"
        write_configs
        rm -f "$DIR/native"
        (
            export HOME="$DIR/home" XDG_CONFIG_HOME="$DIR/home/.config" XDG_RUNTIME_DIR="$DIR/run"
            export PULSE_STATE_PATH="$DIR/state" PULSE_RUNTIME_PATH="$DIR/run"
            unset PULSE_SERVER DBUS_SESSION_BUS_ADDRESS
            exec setsid pulseaudio -n -F "$DIR/default.pa" --daemonize=no --exit-idle-time=-1 \
                --disallow-exit=yes --use-pid-file=no --disallow-module-loading=no \
                --log-target=file:"$DIR/log/pulseaudio.log" </dev/null >/dev/null 2>&1
        ) &
        echo $! >"$DIR/pids/daemon"
        client_env
        for _ in $(seq 100); do
            pactl info >/dev/null 2>&1 && break
            alive "$(daemon_pid)" || die "pulseaudio exited; see $DIR/log/pulseaudio.log"
            sleep 0.05
        done
        pactl info >/dev/null 2>&1 || die "pulseaudio did not answer within 5 s; see $DIR/log/pulseaudio.log"
    fi
    start_keepalive speaker vspeaker.monitor
    start_keepalive mic vmic_feed.monitor
    kick
    echo "vsound: running in $DIR"
}

cmd_stop() {
    [[ -d "$DIR/pids" ]] || { echo "vsound: nothing to stop in $DIR"; return 0; }
    local f
    for f in "$DIR"/pids/*; do
        [[ -e "$f" && "$(basename "$f")" != daemon ]] && stop_pidfile "$f"
    done
    stop_pidfile "$DIR/pids/daemon"
    rm -f "$DIR/native" "$DIR/echo-module"
    echo "vsound: stopped ($DIR)"
}

cmd_env() {
    cat <<EOF
export PULSE_SERVER='unix:$DIR/native'
export PULSE_COOKIE='$DIR/cookie'
export PULSE_CLIENTCONFIG='$DIR/client.conf'
export XDG_RUNTIME_DIR='$DIR/run'
export ALSA_CONFIG_PATH='$DIR/asound.conf'
export VSOUND_DIR='$DIR'
EOF
}

cmd_status() {
    running || { echo "vsound: not running ($DIR)"; return 1; }
    client_env
    echo "daemon pid $(daemon_pid), dir $DIR"
    echo "sinks:";   pactl list short sinks
    echo "sources:"; pactl list short sources
    echo "defaults: sink=$(pactl get-default-sink) source=$(pactl get-default-source)"
    local f
    for f in "$DIR"/pids/keepalive-*; do
        [[ -e "$f" ]] && echo "$(basename "$f") pid $(cat "$f") $(alive "$(cat "$f")" && echo alive || echo dead)"
    done
    [[ -e "$DIR/echo-module" ]] && echo "echo loopback: module $(cat "$DIR/echo-module")"
    return 0
}

cmd_echo_off() {
    client_env
    if [[ -e "$DIR/echo-module" ]]; then
        local m
        for m in $(cat "$DIR/echo-module"); do
            pactl unload-module "$m" 2>/dev/null || true
        done
        rm -f "$DIR/echo-module"
    fi
}

add_loopback() { # delay_ms volume: one more speaker -> mic path; prints its module id
    local delay=$1 volume=$2 mod idx
    mod=$(pactl load-module module-loopback source=vspeaker.monitor sink=vmic_feed \
        latency_msec="$delay" source_dont_move=true sink_dont_move=true remix=true)
    echo "$mod" >>"$DIR/echo-module"
    # The loopback's sink input carries the volume (how loud the "room" returns the speaker).
    for _ in $(seq 40); do
        idx=$(pactl list sink-inputs | awk -v m="$mod" '/^Sink Input #/{i=substr($3,2)} /Owner Module:/{if ($3==m) print i}')
        [[ -n "$idx" ]] && break
        sleep 0.05
    done
    [[ -n "$idx" ]] || die "echo loopback did not appear"
    pactl set-sink-input-volume "$idx" "$volume"
    echo "$mod"
}

cmd_echo_room() { # delay_ms volume: the direct path plus three later, quieter reflections (a room's tail)
    local delay=$1 volume=$2 extra factor
    cmd_echo_on "$delay" "$volume" >/dev/null
    for extra in "15 0.5" "35 0.3" "60 0.15"; do
        set -- $extra
        factor=$(awk -v v="$volume" -v f="$2" 'BEGIN { printf "%.4f", v * f }')
        add_loopback $((delay + $1)) "$factor" >/dev/null
    done
    echo "vsound: echo room on (direct ${delay} ms, volume $volume; reflections +15/+35/+60 ms at -6/-10/-16 dB)"
}

cmd_echo_on() { # delay_ms volume (linear factor like 0.3, or "50%", or "-10dB")
    local delay=$1 volume=$2 mod idx
    running || die "not running; run: scripts/vsound.sh start"
    cmd_echo_off
    client_env
    mod=$(add_loopback "$delay" "$volume")
    echo "vsound: echo on (delay ${delay} ms, volume $volume, module $mod)"
}

cmd_rate() { # which(mic|speaker) rate: reload that device at a new rate
    local which=$1 rate=$2 id
    [[ "$rate" =~ ^[0-9]+$ ]] || die "rate must be a number of Hz, got '$rate'"
    running || die "not running; run: scripts/vsound.sh start"
    client_env
    cmd_echo_off
    if [[ $which == mic ]]; then
        stop_pidfile "$DIR/pids/keepalive-mic"
        for id in $(pactl list short modules | awk '/module-remap-source|sink_name=vmic_feed/{print $1}'); do
            pactl unload-module "$id" 2>/dev/null || true  # dependants go with their master
        done
        pactl load-module module-null-sink sink_name=vmic_feed rate="$rate" channels=1 \
            sink_properties=device.description=voicecli-mic-feed >/dev/null
        pactl load-module module-remap-source source_name=vmic master=vmic_feed.monitor rate="$rate" \
            channels=1 source_properties=device.description=voicecli-mic >/dev/null
        pactl set-default-source vmic
        start_keepalive mic vmic_feed.monitor
        # a default-source change drags the speaker's monitor reader along with it: move it back
        local pid oidx
        pid=$(cat "$DIR/pids/keepalive-speaker" 2>/dev/null || true)
        oidx=$(pactl list source-outputs | awk -v p="\"$pid\"" \
            '/^Source Output #/{i=substr($3,2)} /application.process.id =/{if ($3==p) print i}')
        [[ -n "$oidx" ]] && pactl move-source-output "$oidx" vspeaker.monitor
    else
        stop_pidfile "$DIR/pids/keepalive-speaker"
        for id in $(pactl list short modules | awk '/sink_name=vspeaker/{print $1}'); do
            pactl unload-module "$id" 2>/dev/null || true  # dependants go with their master
        done
        pactl load-module module-null-sink sink_name=vspeaker rate="$rate" channels=1 \
            sink_properties=device.description=voicecli-speaker >/dev/null
        pactl set-default-sink vspeaker
        start_keepalive speaker vspeaker.monitor
    fi
    kick
    echo "vsound: $which at $rate Hz"
}

sink_rate() { # sink name -> its rate in Hz
    pactl list short sinks | awk -v n="$1" '$2==n{for(i=3;i<=NF;i++) if ($i ~ /^[0-9]+Hz$/) {sub(/Hz/,"",$i); print $i}}'
}

mic_modules() { pactl list short modules | awk '/module-remap-source.*source_name=vmic /{print $1}'; }
speaker_modules() { pactl list short modules | awk '/sink_name=vspeaker /{print $1}'; }

pa_cli() { # send commands to the daemon's CLI socket (pactl cannot kill a stream)
    python3 - "$DIR/cli" "$@" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(0.2)
s.connect(sys.argv[1])
s.sendall(("\n".join(sys.argv[2:]) + "\n").encode())
s.shutdown(socket.SHUT_WR)
try:
    while s.recv(4096):
        pass
except TimeoutError:
    pass
EOF
}

client_streams() { # sources|sinks DEVICE: its client streams (source-outputs / sink-inputs), not modules
    local kind=$1 dev=$2 idx streams
    idx=$(pactl list short "$kind" | awk -v n="$dev" '$2==n{print $1}')
    [[ -n "$idx" ]] || return 0
    [[ $kind == sources ]] && streams=source-outputs || streams=sink-inputs
    pactl list short "$streams" | awk -v d="$idx" '$2==d && $3!="-"{print $1}'
}

wait_gone() { # sources|sinks DEVICE: until its client streams are gone (the CLI answers asynchronously)
    for _ in $(seq 40); do [[ -z "$(client_streams "$1" "$2")" ]] && return 0; sleep 0.05; done
    die "the streams on $2 did not go away"
}

cmd_unplug() { # mic|speaker: kill the device's client streams and unload it
    # PulseAudio would move the streams to another device (silently, as desktops do); unplugged hardware
    # under ALSA ends them instead, which is the case voicecli has to recover from.
    local which=$1 id
    running || die "not running; run: scripts/vsound.sh start"
    client_env
    if [[ $which == mic ]]; then
        for id in $(client_streams sources vmic); do pa_cli "kill-source-output $id"; done
        wait_gone sources vmic
        for id in $(mic_modules); do pactl unload-module "$id"; done
    else
        cmd_echo_off
        sink_rate vspeaker >"$DIR/speaker-rate"
        stop_pidfile "$DIR/pids/keepalive-speaker"
        for id in $(client_streams sinks vspeaker); do pa_cli "kill-sink-input $id"; done
        wait_gone sinks vspeaker
        for id in $(speaker_modules); do pactl unload-module "$id"; done
    fi
    echo "vsound: $which unplugged"
}

snapshot() { # sink-inputs|source-outputs: "stream device" of every client stream
    pactl list short "$1" | awk '$3!="-"{print $1, $2}'
}

restore() { # sink-inputs|source-outputs SNAPSHOT: a default-device change moves every stream; move them back
    local idx dev
    while read -r idx dev; do
        if [[ -n "$idx" ]]; then pactl "move-${1%s}" "$idx" "$dev" 2>/dev/null || true; fi
    done <<<"$2"
}

cmd_plug() { # mic|speaker: load the device again with the same name and format
    local which=$1 rate snap
    running || die "not running; run: scripts/vsound.sh start"
    client_env
    if [[ $which == mic ]]; then
        [[ -n "$(mic_modules)" ]] && { echo "vsound: mic already plugged"; return 0; }
        rate=$(sink_rate vmic_feed)
        snap=$(snapshot source-outputs)
        pactl load-module module-remap-source source_name=vmic master=vmic_feed.monitor rate="${rate:-$MIC_RATE_DEFAULT}" \
            channels=1 source_properties=device.description=voicecli-mic >/dev/null
        pactl set-default-source vmic
        restore source-outputs "$snap"
    else
        [[ -n "$(speaker_modules)" ]] && { echo "vsound: speaker already plugged"; return 0; }
        rate=$(cat "$DIR/speaker-rate" 2>/dev/null || true)
        snap=$(snapshot sink-inputs)
        pactl load-module module-null-sink sink_name=vspeaker rate="${rate:-$SPEAKER_RATE_DEFAULT}" channels=1 \
            sink_properties=device.description=voicecli-speaker >/dev/null
        pactl set-default-sink vspeaker
        restore sink-inputs "$snap"
        start_keepalive speaker vspeaker.monitor
    fi
    kick
    echo "vsound: $which plugged"
}

verb=${1:-}
shift || true
case "$verb" in
start)
    ECHO=()
    while [[ $# -gt 0 ]]; do
        case $1 in
        --echo) [[ $# -ge 3 ]] || die "usage: start [DIR] --echo DELAY_MS VOLUME"; ECHO=("$2" "$3"); shift 3 ;;
        *) DIR_ARG=$1; shift ;;
        esac
    done
    set_dir; cmd_start
    if [[ ${#ECHO[@]} -eq 2 ]]; then cmd_echo_on "${ECHO[@]}"; fi
    ;;
stop) DIR_ARG=${1:-}; set_dir; cmd_stop ;;
env) DIR_ARG=${1:-}; set_dir; cmd_env ;;
status) DIR_ARG=${1:-}; set_dir; cmd_status ;;
echo)
    case ${1:-} in
    on) [[ $# -ge 3 ]] || die "usage: echo on DELAY_MS VOLUME [DIR]"; DIR_ARG=${4:-}; set_dir; cmd_echo_on "$2" "$3" ;;
    room) [[ $# -ge 3 ]] || die "usage: echo room DELAY_MS VOLUME [DIR]"; DIR_ARG=${4:-}; set_dir; cmd_echo_room "$2" "$3" ;;
    off) DIR_ARG=${2:-}; set_dir; cmd_echo_off; echo "vsound: echo off" ;;
    *) die "usage: echo on|room DELAY_MS VOLUME [DIR] | echo off [DIR]" ;;
    esac
    ;;
mic-rate | speaker-rate)
    [[ $# -ge 1 ]] || die "usage: $verb RATE [DIR]"
    DIR_ARG=${2:-}; set_dir; cmd_rate "${verb%-rate}" "$1"
    ;;
unplug | plug)
    [[ ${1:-} == mic || ${1:-} == speaker ]] || die "usage: $verb mic|speaker [DIR]"
    DIR_ARG=${2:-}; set_dir; "cmd_$verb" "$1"
    ;;
*)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    [[ -z "$verb" || "$verb" == -h || "$verb" == --help || "$verb" == help ]] || exit 2
    ;;
esac
