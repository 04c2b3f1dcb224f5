module github.com/msb/microsandbox-go

go 1.21
