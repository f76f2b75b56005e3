#!/bin/bash
# What an admin would script with inotify-tools and curl: on every finished file in the inbox
# (close_write, or moved_to for a scanner that renames a temp file into place), base64-encode it
# into a Leyr JSON body and POST it with curl, one file at a time. Used by bench/throughput.py.
#
# Usage: bench/inotify_curl.sh INBOX DOCUMENTS_URL_PREFIX
#   DOCUMENTS_URL_PREFIX: .../emrs/EMR/care-units/UNIT/patients ; the patient is the first
#   folder under INBOX. Credentials from $LEYR_CLIENT_ID and $LEYR_CLIENT_SECRET.
set -u
inbox=${1%/}
prefix=$2
inotifywait -m -r -e close_write,moved_to --format '%w%f' "$inbox" |
while IFS= read -r path; do
    name=${path##*/}
    case $name in .*) continue ;; esac            # hidden temp names: not finished yet
    rel=${path#"$inbox"/}
    patient=${rel%%/*}
    title=${name%.*}
    code=$(
        { printf '{"content":"'; base64 -w0 "$path"
          printf '","format":"application/pdf","title":"%s","type":"Scan"}' "$title"; } |
        curl -sS -o /dev/null -w '%{http_code}' -X POST \
            -H "x-leyr-client-id: $LEYR_CLIENT_ID" \
            -H "x-leyr-client-secret: $LEYR_CLIENT_SECRET" \
            -H "Content-Type: application/json" -H "Accept: application/json" \
            --data-binary @- "$prefix/$patient/documents"
    )
    [ "$code" = 201 ] || echo "upload failed: HTTP $code" >&2
done
