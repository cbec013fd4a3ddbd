#!/bin/sh
# Refuse to start the stack on placeholder or malformed secrets.
#
# Run by the `env-check` one-shot service in docker-compose.yml; every other service
# waits for it to exit 0. Also runnable by hand against your .env:
#   set -a; . ./.env; set +a; sh docker/check-env.sh
# Prints one line per offending variable (its name and the fix, never its value) and
# exits 1; exits 0 when all are usable. POSIX sh (busybox, dash).

status=0

fail() {
    echo "env-check: $1" >&2
    status=1
}

# check NAME VALUE: report at most one problem with VALUE.
check() {
    case "$2" in
        "")
            fail "$1 is empty: set it in .env"
            return ;;
        *change-me*)
            fail "$1 still holds the change-me placeholder from .env.example: replace it in .env"
            return ;;
    esac
    case "$1" in
        LABEL_STUDIO_USER_TOKEN)
            # Label Studio's headless bootstrap stores it as the user's legacy API token.
            case "$2" in
                *[!0-9a-fA-F]*) hex=no ;;
                *) hex=yes ;;
            esac
            if [ "$hex" = no ] || [ "${#2}" -ne 40 ]; then
                fail "$1 must be exactly 40 hex characters (got ${#2} characters, hex: $hex); generate one with: python -c \"import secrets;print(secrets.token_hex(20))\""
            fi ;;
        POSTGRES_PASSWORD)
            # Spliced into postgresql:// URLs (MLflow, Prefect): @ / : # and friends break them.
            case "$2" in
                *[!A-Za-z0-9._~-]*)
                    fail "$1 may only contain letters, digits and . _ ~ - (it goes into postgresql:// URLs)" ;;
            esac ;;
    esac
}

check POSTGRES_PASSWORD "${POSTGRES_PASSWORD:-}"
check LABEL_STUDIO_PASSWORD "${LABEL_STUDIO_PASSWORD:-}"
check LABEL_STUDIO_USER_TOKEN "${LABEL_STUDIO_USER_TOKEN:-}"
check LORA_PIPELINE_WEBHOOK_SECRET "${LORA_PIPELINE_WEBHOOK_SECRET:-}"

if [ "$status" -eq 0 ]; then
    echo "env-check: required secrets are set"
fi
exit "$status"
