"""The services: the only way routes, the CLI and the worker reach the job domain.

`jobs` (`JobService`: submit, get, wait, cancel, list, delete, content, remix), `accounts`
(`AccountService`: a key's credits and usage), `video_ops` (edits and extensions) and
`characters` (a caller's characters, with their own table and migrations). Each validates,
authorizes and charges, then calls the stores in `jobs/`.
"""
