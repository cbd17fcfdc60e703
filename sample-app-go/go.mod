module github.com/devloop-dev/sample-app-go

go 1.26
