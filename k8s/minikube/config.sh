#!/usr/bin/env bash
# Start a minikube cluster for celery-fleet (context: minikube) with the addons the chart can use.
set -euo pipefail
minikube start --profile minikube --cpus 4 --memory 8g --kubernetes-version stable --cni calico
minikube addons enable ingress
minikube addons enable metrics-server
echo "then: skaffold dev -p minikube   (site: http://\$(minikube ip)/)"
