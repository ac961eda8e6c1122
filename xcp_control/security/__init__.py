"""The pool CA and certificates (pki), and who may call what (auth)."""
