"""One flush: claim a batch, send it through an uploader, settle what came back (ack,
split, reject, dead-letter, back off). No transport code: an uploader is anything that
keeps the public ``Uploader`` contract. Also the flush options and this process's link
state (``policy``: backoff, held batches released when the link is back) and pacing."""
