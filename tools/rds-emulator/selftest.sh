#!/usr/bin/env bash
# Self-test of the RDS emulator: verifier against the published vectors,
# end to end with botocore's independent signer, and clean shutdown.
# Run as root. Prints "N passed, N failed"; exits non-zero on any failure.
#
# Env: RDS_EMU_BOTOCORE_PY=/path/python (a python that can import botocore;
#      default: a venv under ${XDG_CACHE_HOME:-$HOME/.cache}/rds-emulator,
#      created with pip from PyPI if missing).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
EMU=$HERE/rds-emulator
VERIFIER=$HERE/verifier.py
PY=/usr/bin/python3
PG_BIN=${RDS_EMU_PG_BIN:-/usr/lib/postgresql/15/bin}
PSQL=$PG_BIN/psql
export RDS_EMU_QUIET=1
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGSERVICE PGSSLMODE \
    PGSSLROOTCERT PGSSLCERT PGSSLKEY PGOPTIONS PGSSLMINPROTOCOLVERSION PGSSLMAXPROTOCOLVERSION
export PGCONNECT_TIMEOUT=10
shopt -u patsub_replacement 2>/dev/null || true # '&' in ${x/a/b} replacements is literal

PASS=0 FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok   - $1"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $1"; }
check() { # DESC command...: ok if the command succeeds
    local desc=$1
    shift
    if "$@"; then ok "$desc"; else bad "$desc"; fi
}

[[ $EUID -eq 0 ]] || { echo "selftest: run as root" >&2; exit 2; }

WORK=$(mktemp -d /tmp/rds-emu-selftest.XXXXXXXX)
chmod 755 "$WORK"
: >"$WORK/pgpass" && chmod 600 "$WORK/pgpass"
export PGPASSFILE=$WORK/pgpass
EMU_DIRS=()
cleanup() {
    local d
    for d in "${EMU_DIRS[@]}"; do
        if [[ -e $d ]]; then "$EMU" stop "$d" >/dev/null 2>&1 || true; fi
    done
    rm -rf -- "$WORK"
}
trap cleanup EXIT

# ------------------------------------------------------------------------
echo "# (a) verifier vs. published vectors (offline, --check)"

# vcheck DESC EXPECTED-PREFIX TOKEN verifier-args...
vcheck() {
    local desc=$1 want=$2 token=$3 got
    shift 3
    got=$(printf '%s' "$token" | "$PY" "$VERIFIER" --check "$@" 2>&1) || true
    if [[ $got == "$want"* ]]; then ok "$desc"; else bad "$desc (want '$want', got '$got')"; fi
}

cat >"$WORK/keys-v.json" <<'EOF'
{
 "akid": {"secret": "secret", "session_token": null, "expires": null},
 "test_id": {"secret": "test_key", "session_token": null, "expires": null},
 "test_id2": {"secret": "test_key2", "session_token": "test_token2", "expires": null},
 "test_access_key": {"secret": "test_secret_key", "session_token": "\n      test_session_token\n    ", "expires": null}
}
EOF
cat >"$WORK/keys-v-wrong.json" <<'EOF'
{"akid": {"secret": "Secret", "session_token": null, "expires": null}}
EOF
cat >"$WORK/keys-v-st.json" <<'EOF'
{"akid": {"secret": "secret", "session_token": "tok", "expires": null}}
EOF
cat >"$WORK/keys-v-exp.json" <<'EOF'
{"akid": {"secret": "secret", "session_token": null, "expires": 1724709000}}
EOF

V4='prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=peccy&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20240826%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=dd0cba843009474347af724090233265628ace491ea17ce3eb3da098b983ad89'
T4=1724709600
H4=prod-instance.us-east-1.rds.amazonaws.com:3306
K=$WORK/keys-v.json
vargs=(--user peccy --region us-east-1 --keys "$K" --hosts "$H4")

vcheck "vector 4: exact token accepted at its time" ACCEPT "$V4" --now $T4 "${vargs[@]}"
vcheck "vector 4: accepted at the last valid second (+900 s)" ACCEPT "$V4" --now $((T4 + 900)) "${vargs[@]}"
vcheck "vector 4: expired at +901 s" "REJECT: token expired" "$V4" --now $((T4 + 901)) "${vargs[@]}"
vcheck "vector 4: accepted 299 s before X-Amz-Date (skew)" ACCEPT "$V4" --now $((T4 - 299)) "${vargs[@]}"
vcheck "vector 4: rejected 301 s before X-Amz-Date" "REJECT: X-Amz-Date is in the future" "$V4" --now $((T4 - 301)) "${vargs[@]}"
vcheck "vector 4: tampered signature" "REJECT: signature mismatch" "${V4%?}8" --now $T4 "${vargs[@]}"
vcheck "vector 4: tampered DBUser" "REJECT: signature mismatch" "${V4/DBUser=peccy/DBUser=peccx}" \
    --now $T4 --user peccx --region us-east-1 --keys "$K" --hosts "$H4"
vcheck "vector 4: tampered X-Amz-Expires" "REJECT: signature mismatch" "${V4/Expires=900/Expires=899}" --now $T4 "${vargs[@]}"
vcheck "vector 4: wrong database user" "REJECT: DBUser does not match" "$V4" \
    --now $T4 --user other --region us-east-1 --keys "$K" --hosts "$H4"
vcheck "vector 4: wrong secret" "REJECT: signature mismatch" "$V4" \
    --now $T4 --user peccy --region us-east-1 --keys "$WORK/keys-v-wrong.json" --hosts "$H4"
vcheck "vector 4: wrong region" "REJECT: credential scope region" "$V4" \
    --now $T4 --user peccy --region us-west-2 --keys "$K" --hosts "$H4"
vcheck "vector 4: host the server does not answer to" "REJECT: token is for" "$V4" \
    --now $T4 --user peccy --region us-east-1 --keys "$K" --hosts "other:3306"
vcheck "vector 4: key needs a session token" "REJECT: missing X-Amz-Security-Token" "$V4" \
    --now $T4 --user peccy --region us-east-1 --keys "$WORK/keys-v-st.json" --hosts "$H4"
vcheck "vector 4: credentials expired" "REJECT: credentials expired" "$V4" \
    --now $T4 --user peccy --region us-east-1 --keys "$WORK/keys-v-exp.json" --hosts "$H4"
vcheck "vector 4: unknown key" "REJECT: unknown access key" "${V4/akid%2F/akie%2F}" --now $T4 "${vargs[@]}"
vcheck "vector 4: scheme rejected" "REJECT: token must not carry a URL scheme" "https://$V4" --now $T4 "${vargs[@]}"
vcheck "vector 4: unencoded '+' rejected" "REJECT: token has characters" "${V4/DBUser=peccy/DBUser=pe+cy}" \
    --now $T4 --user "pe+cy" --region us-east-1 --keys "$K" --hosts "$H4"

# Vectors 1-3: build the tokens around the published signatures; the verifier
# accepts only if its own signature computation gives the same value.
mapfile -t VT < <("$PY" - <<'EOF'
from urllib.parse import quote
enc = lambda s: quote(s, safe="-_.~")
host = "test_database.test_cluster.us-east-1.rds.amazonaws.com:443"
vecs = [
    ("test_id", None, "20221104T062611Z", "ff72d46f1937c1f5917f69d694929ca814b781619b8d730451c7ffef050059b0"),
    ("test_id2", "test_token2", "20221104T062611Z", "7fcb20a161bb493b405686590604bfb864f8ac68dea84b903cd551e93f850ac5"),
    ("test_access_key", "\n      test_session_token\n    ", "20321101T062621Z", "31aa805cd9c7e5929b4a0e25718d933d006ae130156f8b66b60861548fc771ce"),
]
for akid, st, date, sig in vecs:
    q = [("Action", "connect"), ("DBUser", "test_user"),
         ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
         ("X-Amz-Credential", "%s/%s/us-east-1/rds-db/aws4_request" % (akid, date[:8])),
         ("X-Amz-Date", date), ("X-Amz-Expires", "900")]
    if st is not None:
        q.append(("X-Amz-Security-Token", st))
    q += [("X-Amz-SignedHeaders", "host"), ("X-Amz-Signature", sig)]
    print(host + "/?" + "&".join("%s=%s" % (enc(k), enc(v)) for k, v in q))
EOF
)
HV=test_database.test_cluster.us-east-1.rds.amazonaws.com:443
v13=(--user test_user --region us-east-1 --keys "$K" --hosts "$HV")
vcheck "vector 1 (no session token) signature" ACCEPT "${VT[0]}" --now 1667543171 "${v13[@]}"
vcheck "vector 2 (session token) signature" ACCEPT "${VT[1]}" --now 1667543171 "${v13[@]}"
vcheck "vector 3 (session token with whitespace) signature" ACCEPT "${VT[2]}" --now 1982903181 "${v13[@]}"
vcheck "vector 2: wrong session token" "REJECT: wrong X-Amz-Security-Token" \
    "${VT[1]/test_token2/test_token3}" --now 1667543171 "${v13[@]}"
vcheck "vector 2: session token missing" "REJECT: missing X-Amz-Security-Token" \
    "${VT[1]/&X-Amz-Security-Token=test_token2/}" --now 1667543171 "${v13[@]}"
vcheck "vector 1: session token not expected" "REJECT: X-Amz-Security-Token given" \
    "${VT[0]/X-Amz-SignedHeaders/X-Amz-Security-Token=x&X-Amz-SignedHeaders}" --now 1667543171 "${v13[@]}"

# DSQL mode (--service dsql), against tokens botocore's dsql client made
# (spec/support/gen_token_vectors.py: keys AKIDEXAMPLE / wJalrXUt...KEY).
cat >"$WORK/keys-dsql.json" <<'EOF'
{"AKIDEXAMPLE": {"secret": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session_token": null, "expires": null}}
EOF
DH=abc0def1baz2quux3quuux4.dsql.us-west-2.on.aws
D1="$DH/?Action=DbConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20240826%2Fus-west-2%2Fdsql%2Faws4_request&X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=fbd765313e86ad7a4b46450ab96619fb1e5cf65a678aa0da10569b551971b297"
DH2=kiabc2defghijklmnopqrstuvw.dsql.eu-west-1.on.aws
D2="$DH2/?Action=DbConnectAdmin&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20251231%2Feu-west-1%2Fdsql%2Faws4_request&X-Amz-Date=20251231T235959Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=baa92fd7f2b0299550e4724232c28781f8274c4380d1cc2ee3b9966bc526c81b"
TD1=1724709600 TD2=1767225599
dargs=(--region us-west-2 --keys "$WORK/keys-dsql.json" --hosts "$DH" --service dsql)
vcheck "dsql: DbConnect token accepted for a custom role" ACCEPT "$D1" --now $TD1 --user app "${dargs[@]}"
vcheck "dsql: DbConnect token refused for admin" "REJECT: Action is not DbConnectAdmin" "$D1" --now $TD1 --user admin "${dargs[@]}"
vcheck "dsql: DbConnectAdmin token, 3600 s, accepted for admin at its last second" ACCEPT "$D2" \
    --now $((TD2 + 3600)) --user admin --region eu-west-1 --keys "$WORK/keys-dsql.json" --hosts "$DH2" --service dsql
vcheck "dsql: DbConnectAdmin token expired at +3601 s" "REJECT: token expired" "$D2" \
    --now $((TD2 + 3601)) --user admin --region eu-west-1 --keys "$WORK/keys-dsql.json" --hosts "$DH2" --service dsql
vcheck "dsql: DbConnectAdmin token refused for a custom role" "REJECT: Action is not DbConnect" "$D2" \
    --now $TD2 --user app --region eu-west-1 --keys "$WORK/keys-dsql.json" --hosts "$DH2" --service dsql
vcheck "dsql: tampered signature" "REJECT: signature mismatch" "${D1%?}0" --now $TD1 --user app "${dargs[@]}"
vcheck "dsql: X-Amz-Expires past a week" "REJECT: X-Amz-Expires must be 1..604800" \
    "${D1/Expires=900/Expires=604801}" --now $TD1 --user app "${dargs[@]}"
vcheck "dsql: scope service rds-db refused" "REJECT: credential scope service is not dsql" \
    "${D1/\%2Fdsql\%2F/%2Frds-db%2F}" --now $TD1 --user app "${dargs[@]}"
vcheck "dsql: a host with a port refused" "REJECT: a dsql token's host has no port" \
    "${D1/$DH/$DH:5432}" --now $TD1 --user app "${dargs[@]}"
vcheck "dsql: DBUser refused" "REJECT: a dsql token has no DBUser" \
    "${D1/Action=DbConnect/Action=DbConnect&DBUser=app}" --now $TD1 --user app "${dargs[@]}"
vcheck "dsql: host the server does not answer to" "REJECT: token is for" "$D1" --now $TD1 --user app \
    --region us-west-2 --keys "$WORK/keys-dsql.json" --hosts "other.dsql.us-west-2.on.aws" --service dsql
vcheck "dsql: wrong region" "REJECT: credential scope region" "$D1" --now $TD1 --user app \
    --region us-east-1 --keys "$WORK/keys-dsql.json" --hosts "$DH" --service dsql
vcheck "rds-db (default): a dsql token refused" "REJECT: malformed host:port in token" "$D1" \
    --now $TD1 --user app --region us-west-2 --keys "$WORK/keys-dsql.json" --hosts "$DH:5432"
vcheck "dsql: an RDS token refused" "REJECT: a dsql token's host has no port" "$V4" --now $T4 \
    --user peccy --region us-east-1 --keys "$K" --hosts "$H4" --service dsql

# ------------------------------------------------------------------------
echo "# (b) end to end with botocore's signer"

BOTO_PY=${RDS_EMU_BOTOCORE_PY:-}
if [[ -z $BOTO_PY ]]; then
    VENV=${XDG_CACHE_HOME:-$HOME/.cache}/rds-emulator/botocore-venv
    if ! "$VENV/bin/python" -c 'import botocore' >/dev/null 2>&1; then
        echo "# installing botocore into $VENV"
        rm -rf -- "$VENV"
        mkdir -p "$(dirname "$VENV")"
        if ! { "$PY" -m venv "$VENV" && "$VENV/bin/pip" install -q --disable-pip-version-check botocore; } >&2; then
            echo "selftest: could not create a botocore venv (need python3-venv and PyPI)" >&2
        fi
    fi
    BOTO_PY=$VENV/bin/python
fi
if "$BOTO_PY" -c 'import botocore' >/dev/null 2>&1; then ok "botocore available"; else bad "botocore available"; fi

# token AKID SECRET SESSION_TOKEN HOST PORT USER REGION (secrets via env)
token() {
    AK=$1 SK=$2 ST=$3 "$BOTO_PY" - "$4" "$5" "$6" "$7" <<'EOF'
import os, sys, botocore.session
s = botocore.session.get_session()
s.set_credentials(os.environ["AK"], os.environ["SK"], os.environ["ST"] or None)
c = s.create_client("rds", region_name=sys.argv[4])
print(c.generate_db_auth_token(sys.argv[1], int(sys.argv[2]), sys.argv[3], Region=sys.argv[4]))
EOF
}

# dsql_token AKID SECRET SESSION_TOKEN HOST REGION ADMIN(0|1) EXPIRES_IN (secrets via env)
dsql_token() {
    AK=$1 SK=$2 ST=$3 "$BOTO_PY" - "$4" "$5" "$6" "$7" <<'EOF'
import os, sys, botocore.session
s = botocore.session.get_session()
s.set_credentials(os.environ["AK"], os.environ["SK"], os.environ["ST"] or None)
c = s.create_client("dsql", region_name=sys.argv[2])
gen = c.generate_db_connect_admin_auth_token if sys.argv[3] == "1" else c.generate_db_connect_auth_token
print(gen(sys.argv[1], sys.argv[2], int(sys.argv[4])))
EOF
}

# expect_ok DESC WANT PASSWORD CONNINFO [SQL]
expect_ok() {
    local desc=$1 want=$2 pw=$3 ci=$4 sql=${5:-select 1} got
    if got=$(PGPASSWORD=$pw "$PSQL" "$ci" -XAtqc "$sql" 2>&1) && [[ $got == "$want" ]]; then
        ok "$desc"
    else
        bad "$desc (want '$want', got '${got:0:400}')"
    fi
}
# expect_fail DESC PATTERN PASSWORD CONNINFO
expect_fail() {
    local desc=$1 pattern=$2 pw=$3 ci=$4 got
    if got=$(PGPASSWORD=$pw "$PSQL" "$ci" -XAtqc "select 1" 2>&1); then
        bad "$desc (connected, expected failure)"
    elif [[ $got == *"$pattern"* ]]; then
        ok "$desc"
    else
        bad "$desc (want '$pattern', got '${got:0:400}')"
    fi
}
log_has() { # DESC PATTERN
    if grep -qF -- "$2" "$RDS_EMU_VERIFIER_LOG"; then ok "$1"; else bad "$1 (no '$2' in verifier.log)"; fi
}

# start_emu VAR args...: start an emulator, load its env into the shell
start_emu() {
    local out d
    if ! out=$("$EMU" start "$@"); then
        bad "start $*"
        echo "$PASS passed, $FAIL failed"
        exit 1
    fi
    d=$(sed -n 's/^RDS_EMU_DIR=//p' <<<"$out")
    EMU_DIRS+=("$d")
    # shellcheck disable=SC1091
    source "$d/env"
    ok "start $* (port $RDS_EMU_PORT)"
}

start_emu
P=$RDS_EMU_PORT D=$RDS_EMU_DIR CA=$RDS_EMU_CA
for k in RDS_EMU_DIR RDS_EMU_PORT RDS_EMU_HOST RDS_EMU_CA RDS_EMU_OTHER_CA RDS_EMU_CLIENT_CERT \
    RDS_EMU_CLIENT_KEY RDS_EMU_REGION RDS_EMU_DB RDS_EMU_PW_SCRAM_PASSWORD RDS_EMU_PW_MD5_PASSWORD \
    RDS_EMU_PW_CLEAR_PASSWORD; do
    [[ -n ${!k:-} ]] || bad "start printed $k"
done
check "PAM service file exists" test -f "/etc/pam.d/$RDS_EMU_PAM_SERVICE"

AK=AKIAEMULATORTEST0001 SK=$(openssl rand -hex 20)
"$EMU" add-key "$D" "$AK" "$SK"
IAM="host=127.0.0.1 port=$P dbname=kong user=iam_user"

TOK=$(token "$AK" "$SK" "" 127.0.0.1 "$P" iam_user us-east-1)
expect_ok "IAM user, botocore token, sslmode=require" "iam_user|t" "$TOK" "$IAM sslmode=require" \
    "select current_user, ssl_is_used()"
expect_ok "IAM user, sslmode=verify-full with the emulator CA, TLS 1.2" "iam_user|TLSv1.2" "$TOK" \
    "$IAM sslmode=verify-full sslrootcert=$CA" \
    "select current_user, version from pg_stat_ssl where pid = pg_backend_pid()"
expect_ok "IAM user can create tables in kong" "" "$TOK" "$IAM sslmode=require" \
    "create table emu_selftest (id int); drop table emu_selftest"
log_has "verifier logged ACCEPT" "user=\"iam_user\" akid=\"$AK\" ACCEPT"
expect_fail "TLS 1.3 only client refused (server max TLS 1.2)" "SSL" "$TOK" \
    "$IAM sslmode=require ssl_min_protocol_version=TLSv1.3"
expect_fail "IAM user without TLS refused" "pg_hba.conf rejects connection" "$TOK" "$IAM sslmode=disable"
expect_fail "wrong CA refused" "certificate verify failed" "$TOK" \
    "$IAM sslmode=verify-full sslrootcert=$RDS_EMU_OTHER_CA"

TOK2=$(token "$AK" "$SK" "" 127.0.0.2 "$P" iam_user us-east-1)
expect_fail "127.0.0.2 fails hostname verification" "does not match host name" "$TOK2" \
    "host=127.0.0.2 port=$P dbname=kong user=iam_user sslmode=verify-full sslrootcert=$CA"
expect_ok "127.0.0.2 with sslmode=verify-ca works" "iam_user" "$TOK2" \
    "host=127.0.0.2 port=$P dbname=kong user=iam_user sslmode=verify-ca sslrootcert=$CA" "select current_user"

BADTOK=$(token "$AK" "wrong-$SK" "" 127.0.0.1 "$P" iam_user us-east-1)
expect_fail "wrong secret: PAM authentication failed" "PAM authentication failed" "$BADTOK" "$IAM sslmode=require"
log_has "verifier logged signature mismatch" 'REJECT reason="signature mismatch"'
expect_fail "token for iam_user refused for iam_user2" "PAM authentication failed" "$TOK" \
    "host=127.0.0.1 port=$P dbname=kong user=iam_user2 sslmode=require"
expect_ok "iam_user2 with its own token" "iam_user2" "$(token "$AK" "$SK" "" 127.0.0.1 "$P" iam_user2 us-east-1)" \
    "host=127.0.0.1 port=$P dbname=kong user=iam_user2 sslmode=require" "select current_user"
expect_fail "token signed for another region refused" "PAM authentication failed" \
    "$(token "$AK" "$SK" "" 127.0.0.1 "$P" iam_user us-west-2)" "$IAM sslmode=require"
expect_fail "unknown access key refused" "PAM authentication failed" \
    "$(token AKIAUNKNOWN "$SK" "" 127.0.0.1 "$P" iam_user us-east-1)" "$IAM sslmode=require"
log_has "verifier logged unknown key" 'REJECT reason="unknown access key"'

# Temporary credentials with a long (>1 KB) session token
AK2=ASIAEMULATORTEST0002 SK2=$(openssl rand -hex 20)
ST2="IQoJb3JpZ2luX2VjE$(openssl rand -base64 1200 | tr -d '\n')"
"$EMU" add-key "$D" "$AK2" "$SK2" "$ST2" --expires $(($(date +%s) + 3600))
LTOK=$(token "$AK2" "$SK2" "$ST2" 127.0.0.1 "$P" iam_user us-east-1)
if [[ ${#LTOK} -gt 1024 ]]; then ok "session-token token is ${#LTOK} bytes (> 1 KB)"; else bad "token length ${#LTOK}"; fi
expect_ok "IAM user with a >1 KB session token" "iam_user" "$LTOK" "$IAM sslmode=require" "select current_user"
expect_fail "session token missing" "PAM authentication failed" \
    "$(token "$AK2" "$SK2" "" 127.0.0.1 "$P" iam_user us-east-1)" "$IAM sslmode=require"
log_has "verifier logged missing session token" 'REJECT reason="missing X-Amz-Security-Token"'

# Expired credentials
AK3=ASIAEMULATORTEST0003
"$EMU" add-key "$D" "$AK3" "$SK2" "$ST2" --expires $(($(date +%s) - 10))
expect_fail "expired credentials refused" "PAM authentication failed" \
    "$(token "$AK3" "$SK2" "$ST2" 127.0.0.1 "$P" iam_user us-east-1)" "$IAM sslmode=require"
log_has "verifier logged credentials expired" 'REJECT reason="credentials expired"'

# remove-key
"$EMU" remove-key "$D" "$AK2"
expect_fail "removed key refused" "PAM authentication failed" "$LTOK" "$IAM sslmode=require"

# allowed_hosts
RH=mydb.abc.us-east-1.rds.amazonaws.com
RTOK=$(token "$AK" "$SK" "" "$RH" "$P" iam_user us-east-1)
expect_fail "token for $RH refused before allow-host" "PAM authentication failed" "$RTOK" "$IAM sslmode=require"
"$EMU" allow-host "$D" "$RH"
expect_ok "token for $RH accepted after allow-host" "iam_user" "$RTOK" "$IAM sslmode=require" "select current_user"

# Password users
expect_ok "pw_scram over TLS" "pw_scram|t" "$RDS_EMU_PW_SCRAM_PASSWORD" \
    "host=127.0.0.1 port=$P dbname=kong user=pw_scram sslmode=require" "select current_user, ssl_is_used()"
expect_ok "pw_scram without TLS" "pw_scram|f" "$RDS_EMU_PW_SCRAM_PASSWORD" \
    "host=127.0.0.1 port=$P dbname=kong user=pw_scram sslmode=disable" "select current_user, ssl_is_used()"
expect_ok "pw_md5" "pw_md5" "$RDS_EMU_PW_MD5_PASSWORD" \
    "host=127.0.0.1 port=$P dbname=kong user=pw_md5 sslmode=require" "select current_user"
expect_ok "pw_clear" "pw_clear" "$RDS_EMU_PW_CLEAR_PASSWORD" \
    "host=127.0.0.1 port=$P dbname=kong user=pw_clear sslmode=disable" "select current_user"
expect_fail "pw_scram wrong password" "password authentication failed" "nope" \
    "host=127.0.0.1 port=$P dbname=kong user=pw_scram sslmode=require"
expect_fail "pw_md5 wrong password" "password authentication failed" "nope" \
    "host=127.0.0.1 port=$P dbname=kong user=pw_md5 sslmode=require"
expect_ok "stored password formats" "pw_clear|SCRAM-SHA-256\$
pw_md5|md5
pw_scram|SCRAM-SHA-256\$" "" "host=$D port=$P dbname=kong user=postgres" \
    "select rolname, case when rolpassword like 'md5%' then 'md5' else left(rolpassword, 14) end from pg_authid where rolname like 'pw_%' order by 1"
expect_ok "pw_scram with client certificate (mTLS)" "t" "$RDS_EMU_PW_SCRAM_PASSWORD" \
    "host=127.0.0.1 port=$P dbname=kong user=pw_scram sslmode=verify-full sslrootcert=$CA sslcert=$RDS_EMU_CLIENT_CERT sslkey=$RDS_EMU_CLIENT_KEY" \
    "select ssl_client_cert_present()"
expect_ok "superuser psql via the script" "kong" "" "host=$D port=$P dbname=kong user=postgres" "select current_database()"
if [[ $("$EMU" psql "$D" -Atc 'select 40 + 2') == 42 ]]; then ok "rds-emulator psql"; else bad "rds-emulator psql"; fi

# No secrets in logs
leak=0
for s in "$SK" "$SK2" "${ST2:20:40}" "${TOK##*Signature=}" "${LTOK##*Signature=}" "$RDS_EMU_PW_SCRAM_PASSWORD"; do
    if grep -qF -- "$s" "$RDS_EMU_VERIFIER_LOG" "$RDS_EMU_PG_LOG" "$D/setup.log"; then leak=1; fi
done
check "no secrets, session tokens or signatures in logs" test $leak -eq 0
check "keys.json owned by postgres, mode 600" test "$(stat -c %U:%a "$D/keys.json")" = postgres:600
check "server.key owned by postgres, mode 600" test "$(stat -c %U:%a "$D/server.key")" = postgres:600
nb=$(openssl x509 -in "$D/server.crt" -noout -startdate | cut -d= -f2)
if [[ $(($(date +%s) - $(date -d "$nb" +%s))) -ge 86000 ]]; then ok "server cert notBefore backdated"; else bad "server cert notBefore $nb"; fi

# TLS 1.3 emulator in another region
echo "# --tls13 --region eu-west-3"
start_emu --tls13 --region eu-west-3
P3=$RDS_EMU_PORT D3=$RDS_EMU_DIR
"$EMU" add-key "$D3" "$AK" "$SK"
expect_ok "TLS 1.3 negotiated with --tls13" "iam_user|TLSv1.3" \
    "$(token "$AK" "$SK" "" 127.0.0.1 "$P3" iam_user eu-west-3)" \
    "host=127.0.0.1 port=$P3 dbname=kong user=iam_user sslmode=verify-full sslrootcert=$RDS_EMU_CA" \
    "select current_user, version from pg_stat_ssl where pid = pg_backend_pid()"
expect_fail "us-east-1 token refused by an eu-west-3 emulator" "PAM authentication failed" \
    "$(token "$AK" "$SK" "" 127.0.0.1 "$P3" iam_user us-east-1)" \
    "host=127.0.0.1 port=$P3 dbname=kong user=iam_user sslmode=require"
log_has "verifier logged region mismatch" 'REJECT reason="credential scope region us-east-1 is not eu-west-3"'

echo "# --no-ssl"
start_emu --no-ssl
P4=$RDS_EMU_PORT D4=$RDS_EMU_DIR
"$EMU" add-key "$D4" "$AK" "$SK"
T4K=$(token "$AK" "$SK" "" 127.0.0.1 "$P4" iam_user us-east-1)
expect_fail "--no-ssl: sslmode=require fails" "does not support SSL" "$T4K" \
    "host=127.0.0.1 port=$P4 dbname=kong user=iam_user sslmode=require"
expect_fail "--no-ssl: IAM user refused without TLS" "pg_hba.conf rejects connection" "$T4K" \
    "host=127.0.0.1 port=$P4 dbname=kong user=iam_user sslmode=disable"
expect_ok "--no-ssl: password user works" "pw_scram" "$RDS_EMU_PW_SCRAM_PASSWORD" \
    "host=127.0.0.1 port=$P4 dbname=kong user=pw_scram sslmode=disable" "select current_user"

echo "# --service dsql"
start_emu --service dsql
P5=$RDS_EMU_PORT D5=$RDS_EMU_DIR
check "--service dsql: RDS_EMU_SERVICE=dsql" test "$RDS_EMU_SERVICE" = dsql
"$EMU" add-key "$D5" "$AK" "$SK"
DA=$(dsql_token "$AK" "$SK" "" 127.0.0.1 us-east-1 1 900)
expect_ok "dsql: admin with botocore's DbConnectAdmin token" "admin|t" "$DA" \
    "host=127.0.0.1 port=$P5 dbname=kong user=admin sslmode=require" "select current_user, ssl_is_used()"
expect_ok "dsql: iam_user with botocore's DbConnect token (3600 s)" "iam_user" \
    "$(dsql_token "$AK" "$SK" "" 127.0.0.1 us-east-1 0 3600)" \
    "host=127.0.0.1 port=$P5 dbname=kong user=iam_user sslmode=require" "select current_user"
expect_fail "dsql: DbConnectAdmin token refused for iam_user" "PAM authentication failed" "$DA" \
    "host=127.0.0.1 port=$P5 dbname=kong user=iam_user sslmode=require"
log_has "dsql: verifier logged the wrong action" 'REJECT reason="Action is not DbConnect"'
expect_fail "dsql: an RDS token refused" "PAM authentication failed" \
    "$(token "$AK" "$SK" "" 127.0.0.1 "$P5" iam_user us-east-1)" \
    "host=127.0.0.1 port=$P5 dbname=kong user=iam_user sslmode=require"
DN=abc0def1baz2quux3quuux4.dsql.us-east-1.on.aws
DNT=$(dsql_token "$AK" "$SK" "" "$DN" us-east-1 1 900)
expect_fail "dsql: token for $DN refused before allow-host" "PAM authentication failed" "$DNT" \
    "host=127.0.0.1 port=$P5 dbname=kong user=admin sslmode=require"
"$EMU" allow-host "$D5" "$DN"
expect_ok "dsql: token for $DN accepted after allow-host" "admin" "$DNT" \
    "host=127.0.0.1 port=$P5 dbname=kong user=admin sslmode=require" "select current_user"
expect_fail "rds-db emulator refuses a dsql token" "PAM authentication failed" \
    "$(dsql_token "$AK" "$SK" "" 127.0.0.1 eu-west-3 0 900)" \
    "host=127.0.0.1 port=$P3 dbname=kong user=iam_user sslmode=require"

# ------------------------------------------------------------------------
echo "# (c) stop and cleanup"
port_closed() {
    "$PY" -c 'import socket,sys
s=socket.socket(); s.settimeout(2)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) else 1)' "$1"
}
no_process_with() { # no process has STRING in its command line
    local f
    for f in /proc/[0-9]*/cmdline; do
        if tr '\0' ' ' <"$f" 2>/dev/null | grep -qF -- "$1"; then return 1; fi
    done
    return 0
}
for d in "${EMU_DIRS[@]}"; do
    svc=$(<"$d/pam_service")
    port=$(sed -n "s/^export RDS_EMU_PORT='\(.*\)'$/\1/p" "$d/env")
    if "$EMU" stop "$d" >/dev/null 2>&1; then ok "stop $d"; else bad "stop $d"; fi
    check "  directory removed" test ! -e "$d"
    check "  PAM service file /etc/pam.d/$svc removed" test ! -e "/etc/pam.d/$svc"
    check "  no processes left" no_process_with "$d/data"
    check "  port $port closed" port_closed "$port"
done
check "stop is idempotent" "$EMU" stop "${EMU_DIRS[0]}"

echo "# failed start cleans up"
mkdir -m 755 "$WORK/fakebin"
for b in pg_ctl psql; do ln -s "$PG_BIN/$b" "$WORK/fakebin/$b"; done
printf '#!/bin/sh\necho "fake initdb failure" >&2\nexit 1\n' >"$WORK/fakebin/initdb"
chmod 755 "$WORK/fakebin/initdb"
if RDS_EMU_PG_BIN=$WORK/fakebin "$EMU" start --dir "$WORK/failstart" >/dev/null 2>&1; then
    bad "start with a failing initdb fails"
    EMU_DIRS+=("$WORK/failstart")
else
    ok "start with a failing initdb fails"
fi
check "  failed start removed its directory" test ! -e "$WORK/failstart"
check "  failed start removed its PAM file" \
    test -z "$(grep -lsF "dir=$WORK/failstart" /etc/pam.d/rds_emu_* || true)"

echo "$PASS passed, $FAIL failed"
[[ $FAIL -eq 0 ]]
