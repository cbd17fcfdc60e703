module devloop.local/pause

go 1.25
