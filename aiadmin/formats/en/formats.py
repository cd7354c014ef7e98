"""One date/time format across the admin (docs/admin.md): ISO-like, 24 h, the
zone named. Django's own rendering (read-only fields, lists) uses these."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
